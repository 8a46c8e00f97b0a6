"""`python-chaos` — misbehaves on request, to show that a Python job is contained like a Rust one
(`sample-jobs/chaos` is the Rust original).

Args: `{"mode": …}` with one of
`ok`, `spin` (loop forever), `alloc` (`mb`: allocate that much, or without end),
`raise` (`message`: an uncaught exception), `fail` / `retry` (`message`),
`print` (`text` to stdout, `error` to stderr), `progress` (`steps`), `enqueue` (`module`, `args`),
`leak` (`secret`: read it and write it to stdout, stderr, the log and the result).
"""

import sys

from wasmq_job import Fail, Retry, enqueue, job, log, progress, secret


@job
def chaos(args, info):
    mode = args.get("mode") if isinstance(args, dict) else None
    if mode == "ok":
        return {"ok": True, "attempt": info.attempt}
    if mode == "spin":
        n = 0
        while True:
            n += 1
    if mode == "alloc":
        chunks = []
        limit = args.get("mb")
        while limit is None or len(chunks) < limit:
            chunks.append(bytearray(1 << 20))
        return {"allocated_mb": len(chunks)}
    if mode == "raise":
        raise ValueError(args.get("message", "chaos raised"))
    if mode == "fail":
        raise Fail(args.get("message", "chaos failed"))
    if mode == "retry":
        raise Retry(args.get("message", "chaos wants a retry"))
    if mode == "print":
        print(args.get("text", ""))
        print(args.get("error", ""), file=sys.stderr)
        return {"printed": True}
    if mode == "progress":
        steps = int(args.get("steps", 4))
        for i in range(1, steps + 1):
            progress(i * 100 // steps, f"step {i} of {steps}")
            log.info(f"step {i}")
        return {"steps": steps}
    if mode == "enqueue":
        return {"enqueued": enqueue(args["module"], args.get("args"))}
    if mode == "leak":
        value = secret(args["secret"])
        print(f"stdout: {value}")
        print(f"stderr: {value}", file=sys.stderr)
        log.info(f"log: {value}")
        return {"leaked": value}
    raise Fail(f"unknown mode {mode!r}")
