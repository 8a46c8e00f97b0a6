// `js-chaos` — misbehaves on request, to show that a JavaScript job is contained like a Rust one
// (`sample-jobs/chaos` is the Rust original).
//
// Args: `{"mode": …}` with one of `ok`, `spin` (loop forever), `alloc` (`mb`: allocate that
// much, or without end), `raise` (`message`: an uncaught exception), `fail` / `retry`
// (`message`), `print` (`text` to stdout, `error` to stderr), `progress` (`steps`), `enqueue`
// (`module`, `args`), `leak` (`secret`: read it and write it to stdout, stderr, the log and the
// result).

import { Fail, Retry, enqueue, job, log, progress, secret } from "../../guest-sdk/js/wasmq_job.js";

export const run = job((args, info) => {
  switch (args?.mode) {
    case "ok":
      return { ok: true, attempt: info.attempt };
    case "spin": {
      let n = 0;
      for (;;) n++;
    }
    case "alloc": {
      const chunks = [];
      while (args.mb == null || chunks.length < args.mb) chunks.push(new Uint8Array(1 << 20).fill(1));
      return { allocated_mb: chunks.length };
    }
    case "raise":
      throw new TypeError(args.message ?? "chaos raised");
    case "fail":
      throw new Fail(args.message ?? "chaos failed");
    case "retry":
      throw new Retry(args.message ?? "chaos wants a retry");
    case "print":
      console.log(args.text ?? "");
      console.error(args.error ?? "");
      return { printed: true };
    case "progress": {
      const steps = args.steps ?? 4;
      for (let i = 1; i <= steps; i++) {
        progress((i * 100) / steps, `step ${i} of ${steps}`);
        log.info(`step ${i}`);
      }
      return { steps };
    }
    case "enqueue":
      return { enqueued: enqueue(args.module, args.args ?? null) };
    case "leak": {
      const value = secret(args.secret);
      console.log(`stdout: ${value}`);
      console.error(`stderr: ${value}`);
      log.info(`log: ${value}`);
      return { leaked: value };
    }
    default:
      throw new Fail(`unknown mode ${JSON.stringify(args?.mode)}`);
  }
});
