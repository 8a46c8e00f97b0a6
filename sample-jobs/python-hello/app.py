"""`python-hello` — the `hello` job in Python: greets whoever the args name.

Args: `{"name": "Ada"}` (the name, or the args as a whole, may be left out: "world").
Result: `{"message": "Hello, Ada!"}`.
"""

from dataclasses import dataclass

from wasmq_job import job


@dataclass
class Args:
    name: str = "world"


@job
def hello(args: Args):
    return {"message": f"Hello, {args.name}!"}
