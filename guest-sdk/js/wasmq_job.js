// Write a wasmq job in JavaScript as a plain function.
//
// A job is a WebAssembly component built against the `wasmq:job` WIT contract (`wit/`) with
// componentize-js. This module hides the contract, as the Rust `wasmq-guest` crate does:
//
//   import { job, log, Fail } from "./wasmq_job.js";
//
//   export const run = job((args, info) => {
//     const name = args?.name ?? "world";
//     if (!name) throw new Fail("`name` must not be empty");
//     log.info(`greeting ${name} (attempt ${info.attempt})`);
//     return { message: `Hello, ${name}!` };
//   });
//
// Build it with `componentize-js job.js -w wit -n job -d fetch-event -o hello.wasm`
// (`sample-jobs/build.sh` does this for every `sample-jobs/js-*`, with this file copied beside).
//
// Arguments and results:
// - The function gets `(args, info)`: `args` is the invocation's JSON args decoded (`null` when
//   there were none), or the raw `Uint8Array` with `job(fn, { raw: true })`; `info` has `id`,
//   `queue`, `attempt` and `maxAttempts`. Args that are not JSON end the job for good.
// - The return value is encoded as JSON, or returned as is when it is a `Uint8Array`.
// - `throw new Fail(…)` ends the job for good (the dead set); `throw new Retry(…)`, and any other
//   exception, is a transient failure retried with backoff — like an exception in Sidekiq. The
//   stack is written to stderr, which the host captures into the job's record.

import * as host from "wasmq:job/host@0.1.0";

/** A transient failure: the job is tried again with backoff while attempts remain. */
export class Retry extends Error {
  name = "Retry";
}

/** A permanent failure: the job goes straight to the dead set. */
export class Fail extends Error {
  name = "Fail";
}

/** `log.info("…")` and friends append a record to the job's log. */
export const log = Object.fromEntries(
  ["trace", "debug", "info", "warn", "error"].map((level) => [level, (message) => host.log(level, String(message))]),
);

/** Reports progress, 0–100 (clamped), with an optional note; visible while the job runs. */
export function progress(percent, note) {
  host.progress(Math.max(0, Math.min(100, Math.trunc(percent))), note ?? undefined);
}

/** Enqueues a sub-job of `module` (`sha256:…`) on this job's queue with `args` (JSON, or a
 * `Uint8Array` as it is). Returns its id; throws `Retry` with the host's reason if refused. */
export function enqueue(module, args = null) {
  const payload = args instanceof Uint8Array ? args : new TextEncoder().encode(JSON.stringify(args));
  try {
    return host.enqueue(module, payload);
  } catch (e) {
    throw new Retry(`enqueue refused: ${e?.payload ?? e}`);
  }
}

/** Reads secret `name`, which the operator granted this module (`wasmq grant … --secret NAME`).
 * Throws `Fail` with the host's reason when it cannot be read (not granted, not set): retrying
 * cannot grant it. The host redacts the value from everything the run leaves behind. */
export function secret(name) {
  try {
    return host.secret(name);
  } catch (e) {
    throw new Fail(`secret \`${name}\`: ${e?.payload ?? e}`);
  }
}

/** How a thrown error ends the run: `Fail` and `Retry` as they say, anything else retried. */
function ending(e) {
  if (e instanceof Fail) return { tag: "fail", val: e.message || "failed" };
  if (e instanceof Retry) return { tag: "retry", val: e.message || "retry" };
  const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  // SpiderMonkey's `stack` is the frames only.
  console.error(e?.stack ? `${message}\n${e.stack}` : message);
  return { tag: "retry", val: message };
}

function encode(result) {
  return result instanceof Uint8Array ? result : new TextEncoder().encode(JSON.stringify(result ?? null));
}

/** Makes `fn` the job: returns the `run` function the component must export. `fn` may be
 * `async` (to `await fetch(…)`): componentize-js runs the event loop until its promise settles. */
export function job(fn, { raw = false } = {}) {
  return function run(info, args) {
    try {
      let decoded = args;
      if (!raw) {
        try {
          decoded = args.length ? JSON.parse(new TextDecoder().decode(args)) : null;
        } catch (e) {
          throw new Fail(`args are not JSON: ${e.message}`);
        }
      }
      const result = fn(decoded, info);
      if (typeof result?.then === "function") {
        return result.then(encode, (e) => {
          throw ending(e);
        });
      }
      return encode(result);
    } catch (e) {
      throw ending(e);
    }
  };
}
