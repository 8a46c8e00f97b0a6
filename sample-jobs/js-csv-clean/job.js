// `js-csv-clean` — the `csv-clean` job in JavaScript, rule for rule (see
// `sample-jobs/csv-clean/src/lib.rs`), so that both give the same result for the same input.
//
// Args: `{"csv": "<text with a header row>", "key": ["email"]}`. Result: `{"columns", "rows",
// "stats": {"input_rows", "output_rows", "empty", "duplicates"}}`. Reports progress every 1,000
// rows and logs a summary. (The Rust job does neither: logs and progress are not part of the result.)

import { Fail, job, log, progress } from "../../guest-sdk/js/wasmq_job.js";

// Rust's `char::is_whitespace` (Unicode White_Space): JavaScript's `\s` also matches U+FEFF and
// misses U+0085.
const WHITESPACE = /[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/u;

const words = (text) => text.split(WHITESPACE).filter((w) => w !== "");

function normaliseHeader(name) {
  let out = "";
  let pendingSep = false;
  for (const ch of words(name).join(" ")) {
    for (const c of ch.toLowerCase()) {
      if ((c >= "a" && c <= "z") || (c >= "0" && c <= "9")) {
        if (pendingSep && out) out += "_";
        pendingSep = false;
        out += c;
      } else {
        pendingSep = true;
      }
    }
  }
  return out;
}

const normaliseCell = (cell) => words(cell).join(" ");

// Whether `c` has case (a stand-in for Unicode's Cased property: this engine has no `\p{…}`), and
// the usual case-ignorable characters between a letter and a final sigma.
const isCased = (c) => c.toLowerCase() !== c.toUpperCase();
const isCaseIgnorable = (c) => /['.:\u00b7\u2019\u0300-\u036f]/.test(c);

/** `toLowerCase` with Unicode's Final_Sigma rule, which Rust's `str::to_lowercase` and Python's
 * `str.lower` apply and this engine (built without ICU) does not: a capital sigma after a cased
 * letter and not before one becomes `ς`. */
function lowercase(text) {
  const chars = [...text];
  return chars
    .map((c, i) => {
      if (c !== "\u03a3") return c.toLowerCase();
      let j = i - 1;
      while (j >= 0 && isCaseIgnorable(chars[j])) j--;
      let k = i + 1;
      while (k < chars.length && isCaseIgnorable(chars[k])) k++;
      const final = j >= 0 && isCased(chars[j]) && !(k < chars.length && isCased(chars[k]));
      return final ? "\u03c2" : "\u03c3";
    })
    .join("");
}

/** RFC 4180 records as the Rust `csv` crate reads them: `\r`, `\n` or `\r\n` end a record, blank
 * lines are skipped, a quote opens a quoted field only at its start, `""` inside one is a quote,
 * and characters after its closing quote are kept. */
function* records(text) {
  let i = 0;
  const n = text.length;
  while (i < n) {
    if (text[i] === "\r" || text[i] === "\n") {
      i++;
      continue; // blank line
    }
    const fields = [];
    for (;;) {
      let field = "";
      if (text[i] === '"') {
        i++;
        for (;;) {
          if (i >= n) break;
          if (text[i] === '"') {
            if (text[i + 1] === '"') {
              field += '"';
              i += 2;
              continue;
            }
            i++;
            break;
          }
          field += text[i++];
        }
      }
      while (i < n && text[i] !== "," && text[i] !== "\r" && text[i] !== "\n") field += text[i++];
      fields.push(field);
      if (i < n && text[i] === ",") {
        i++;
        continue;
      }
      if (text[i] === "\r" && text[i + 1] === "\n") i++;
      i++;
      break;
    }
    yield fields;
  }
}

export const run = job((args) => {
  if (typeof args?.csv !== "string") throw new Fail('args must be {"csv": "<text>", "key"?: [...]}');
  const lines = Math.max(1, args.csv.split("\n").length - 1);
  const reader = records(args.csv);
  const header = reader.next();
  if (header.done) throw new Fail("invalid CSV header: the input is empty");
  const columns = header.value.map(normaliseHeader);
  const isEmail = columns.map((c) => c.endsWith("email"));
  let keyIdx;
  if (args.key == null) {
    keyIdx = columns.map((_, i) => i);
  } else {
    keyIdx = args.key.map((k) => {
      const name = normaliseHeader(k);
      const at = columns.indexOf(name);
      if (at < 0) throw new Fail(`key column \`${name}\` is not in the header ${JSON.stringify(columns)}`);
      return at;
    });
  }
  const seen = new Set();
  const stats = { input_rows: 0, output_rows: 0, empty: 0, duplicates: 0 };
  const rows = [];
  for (const record of reader) {
    if (record.length !== columns.length) {
      throw new Fail(`invalid CSV: record ${stats.input_rows + 1} has ${record.length} fields, the header has ${columns.length}`);
    }
    stats.input_rows++;
    if (stats.input_rows % 1000 === 0) progress((stats.input_rows * 100) / lines, `${stats.input_rows} rows`);
    const row = record.map((c, i) => (isEmail[i] ? lowercase(normaliseCell(c)) : normaliseCell(c)));
    if (row.every((c) => c === "")) {
      stats.empty++;
      continue;
    }
    const key = keyIdx.map((i) => row[i]).join("\u001f");
    if (seen.has(key)) {
      stats.duplicates++;
      continue;
    }
    seen.add(key);
    rows.push(row);
  }
  stats.output_rows = rows.length;
  log.info(`kept ${rows.length} of ${stats.input_rows} rows`);
  return { columns, rows, stats };
});
