"""`python-csv-clean` — the `csv-clean` job in Python, rule for rule (see
`sample-jobs/csv-clean/src/lib.rs`), so that both give the same result for the same input.

Args: `{"csv": "<text with a header row>", "key": ["email"]}`. Result: `{"columns", "rows",
"stats": {"input_rows", "output_rows", "empty", "duplicates"}}`. Reports progress every 1,000
rows and logs a summary. (The Rust job does neither: logs and progress are not part of the result.)
"""

import csv
import io

from wasmq_job import Fail, job, log, progress

# Rust's `char::is_whitespace` (Unicode White_Space): Python's `str.split()` would also split on
# U+001C–U+001F, which Rust keeps.
WHITESPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)


def words(text):
    out, word = [], []
    for c in text:
        if c in WHITESPACE:
            if word:
                out.append("".join(word))
                word = []
        else:
            word.append(c)
    if word:
        out.append("".join(word))
    return out


def normalise_header(name):
    out, pending_sep = [], False
    for c in "".join(c.lower() for c in " ".join(words(name))):
        if c.isascii() and (c.islower() or c.isdigit()):
            if pending_sep and out:
                out.append("_")
            pending_sep = False
            out.append(c)
        else:
            pending_sep = True
    return "".join(out)


def normalise_cell(cell):
    return " ".join(words(cell))


@job
def clean(args):
    if not isinstance(args, dict) or not isinstance(args.get("csv"), str):
        raise Fail('args must be {"csv": "<text>", "key"?: [...]}')
    reader = csv.reader(io.StringIO(args["csv"], newline=""))
    lines = max(1, args["csv"].count("\n"))
    try:
        header = next(reader, None)
        if header is None:
            raise Fail("invalid CSV header: the input is empty")
        columns = [normalise_header(h) for h in header]
        is_email = [c.endswith("email") for c in columns]
        keys = args.get("key")
        if keys is None:
            key_idx = list(range(len(columns)))
        else:
            key_idx = []
            for k in keys:
                k = normalise_header(k)
                if k not in columns:
                    raise Fail(f"key column `{k}` is not in the header {columns}")
                key_idx.append(columns.index(k))
        seen = set()
        stats = {"input_rows": 0, "output_rows": 0, "empty": 0, "duplicates": 0}
        rows = []
        for record in reader:
            if not record:
                continue  # a blank line: the Rust csv reader skips those too
            if len(record) != len(columns):
                raise Fail(
                    f"invalid CSV: line {reader.line_num} has {len(record)} fields, "
                    f"the header has {len(columns)}"
                )
            stats["input_rows"] += 1
            if stats["input_rows"] % 1000 == 0:
                progress(stats["input_rows"] * 100 // lines, f"{stats['input_rows']} rows")
            row = [normalise_cell(c) for c in record]
            row = [c.lower() if e else c for c, e in zip(row, is_email)]
            if all(c == "" for c in row):
                stats["empty"] += 1
                continue
            key = "\x1f".join(row[i] for i in key_idx)
            if key in seen:
                stats["duplicates"] += 1
                continue
            seen.add(key)
            rows.append(row)
    except csv.Error as e:
        raise Fail(f"invalid CSV: {e}") from None
    stats["output_rows"] = len(rows)
    log.info(f"kept {len(rows)} of {stats['input_rows']} rows")
    return {"columns": columns, "rows": rows, "stats": stats}
