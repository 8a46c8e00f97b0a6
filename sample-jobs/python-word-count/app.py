"""`python-word-count` — counts the words of a text, in Python: the map step of a map-reduce.

Args: `{"text": "…"}`. A word is a run of letters, digits or apostrophes, lowercased (the same
rule as the Rust `word-count`). Result: `{"counts": {"word": n, …}}`.
"""

from collections import Counter

from wasmq_job import job


def words(text: str):
    word = []
    for c in text:
        if c.isalnum() or c == "'":
            word.append(c)
        elif word:
            yield "".join(word)
            word = []
    if word:
        yield "".join(word)


@job
def word_count(args):
    counts = Counter(w.strip("'").lower() for w in words(args["text"]))
    counts.pop("", None)
    return {"counts": dict(counts)}
