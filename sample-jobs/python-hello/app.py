"""`python-hello` — the `hello` job in Python: greets whoever the args name.

Args: `{"name": "Ada"}` (the name, or the args as a whole, may be left out: "world").
Result: `{"message": "Hello, Ada!"}`.
"""

from wasmq_job import job


@job
def hello(args):
    name = (args or {}).get("name", "world")
    return {"message": f"Hello, {name}!"}
