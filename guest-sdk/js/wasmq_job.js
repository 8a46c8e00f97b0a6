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

import * as host from "wasmq:job/host@0.2.0";

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

/** A sub-job this run enqueued: its `id`, and `join()` for its result. */
export class Handle {
  constructor(id) {
    this.id = id;
  }

  /** Waits for the sub-job and returns its JSON result decoded (a `Uint8Array` if it returned
   * raw bytes). A sub-job that died or was cancelled throws `Retry` naming its reason, so that
   * this job runs again later (and, out of attempts, dies with that reason). */
  join() {
    return joinAll([this])[0];
  }

  toString() {
    return this.id;
  }

  toJSON() {
    return this.id;
  }
}

const ms = (seconds) => (seconds == null ? undefined : BigInt(Math.max(0, Math.round(seconds * 1000))));

/** Enqueues a sub-job of `module` (`sha256:…`) with `args` (JSON, or a `Uint8Array` as it is) on
 * this job's queue (or `queue`), no earlier than `delay` seconds from now. Its id is this job's id
 * and `key` (or the call's position), so this job running again names the same sub-job, which is
 * not enqueued twice. Returns its `Handle`; throws `Retry` with the host's reason if refused. */
export function enqueue(module, args = null, { key, queue, delay, maxAttempts, priority } = {}) {
  const payload = args instanceof Uint8Array ? args : new TextEncoder().encode(JSON.stringify(args));
  try {
    return new Handle(host.enqueue(module, payload, { key, queue, delayMs: ms(delay), maxAttempts, priority }));
  } catch (e) {
    throw new Retry(`enqueue refused: ${e?.payload ?? e}`);
  }
}

function decode(bytes) {
  if (!bytes.length) return null;
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return bytes;
  }
}

/** Waits until `first` of `handles` have ended (all when left out) or `timeout` seconds pass;
 * returns for each, in order, `{state: "done", result}`, `{state: "dead", kind, message}`,
 * `{state: "cancelled"}` or `{state: "pending"}`. Nothing here fails this job: the caller
 * decides. Throws `Retry` when the host refuses the wait. */
export function wait(handles, { first, timeout } = {}) {
  let outcomes;
  try {
    outcomes = host.join(handles.map(String), { first, timeoutMs: ms(timeout) });
  } catch (e) {
    throw new Retry(`join refused: ${e?.payload ?? e}`);
  }
  return outcomes.map((o) => {
    switch (o.tag) {
      case "done":
        return { state: "done", result: decode(o.val) };
      case "dead":
        return { state: "dead", kind: o.val.kind, message: o.val.message };
      default:
        return { state: o.tag };
    }
  });
}

/** Waits for all of `handles` and returns their results in order; the first sub-job that died or
 * was cancelled throws `Retry` naming it (see `Handle.join`). */
export function joinAll(handles) {
  return wait(handles).map((o, i) => {
    const id = String(handles[i]);
    if (o.state === "done") return o.result;
    if (o.state === "dead") throw new Retry(`sub-job ${id} died (${o.kind}): ${o.message}`);
    if (o.state === "cancelled") throw new Retry(`sub-job ${id} was cancelled`);
    throw new Retry(`the host returned before sub-job ${id} ended`);
  });
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
