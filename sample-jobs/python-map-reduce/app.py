"""`python-map-reduce` — `map-reduce` in Python: splits a text into chunks, counts each chunk's
words in a sub-job of any language, awaits them all and merges the counts.

Args: `{"text": "…", "chunks": n, "counter": "sha256:<a word-count job>"}`. Result:
`{"counts": {"word": n, …}}`. Each sub-job is keyed by its chunk (`chunk-0`, …), so this job
running again re-attaches to them; one that died raises `Retry` with its reason.
"""

from collections import Counter

from wasmq_job import Fail, enqueue, join_all, job, log


def chunks(text: str, n: int):
    words = text.split()
    n = max(1, min(n, len(words) or 1))
    return [" ".join(words[i * len(words) // n:(i + 1) * len(words) // n]) for i in range(n)]


@job
def map_reduce(args):
    n = args.get("chunks", 0)
    if not 1 <= n <= 1000:
        raise Fail("`chunks` must be 1 to 1000")
    handles = [
        enqueue(args["counter"], {"text": piece}, key=f"chunk-{i}")
        for i, piece in enumerate(chunks(args["text"], n))
    ]
    log.info(f"waiting for {len(handles)} word counts")
    total = Counter()
    for part in join_all(handles):
        total.update(part["counts"])
    return {"counts": dict(total)}
