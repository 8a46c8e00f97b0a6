// The JavaScript client against a live `wasmq serve` (with an in-process worker). Run by
// `tests/all/clients.rs`, which sets WASMQ_URL, WASMQ_TOKEN, WASMQ_ENQUEUE_TOKEN and WASMQ_JOBS_DIR.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { before, describe, test } from "node:test";

import { Client, WasmqError } from "../wasmq.mjs";

const URL = process.env.WASMQ_URL;

describe("client", { skip: URL ? false : "WASMQ_URL is not set: run through `cargo test --test clients`" }, () => {
  let client, hello, chaos;

  before(async () => {
    client = new Client(URL, { token: process.env.WASMQ_TOKEN });
    hello = await client.upload(await readFile(join(process.env.WASMQ_JOBS_DIR, "hello.wasm")));
    chaos = await client.upload(await readFile(join(process.env.WASMQ_JOBS_DIR, "chaos.wasm")));
  });

  test("upload returns the content address", () => {
    assert.match(hello, /^sha256:[0-9a-f]{64}$/);
  });

  test("enqueue and wait", async () => {
    const id = await client.enqueue(hello, { name: "JavaScript" });
    const job = await client.wait(id, { timeoutMs: 30_000 });
    assert.equal(job.state, "succeeded");
    assert.deepEqual(job.report.result, { message: "Hello, JavaScript!" });
  });

  test("enqueueMany keeps order and ids are idempotency keys", async () => {
    const tag = Math.random().toString(16).slice(2, 10);
    const ids = await client.enqueueMany([0, 1, 2].map((i) => ({ module: hello, id: `js-${tag}-${i}`, args: { name: `${i}` } })));
    assert.deepEqual(ids, [0, 1, 2].map((i) => `js-${tag}-${i}`));
    for (const [i, id] of ids.entries()) {
      assert.deepEqual((await client.wait(id, { timeoutMs: 30_000 })).report.result, { message: `Hello, ${i}!` });
    }
    assert.equal(await client.enqueue(hello, { name: "other" }, { id: ids[0] }), ids[0]);
    assert.deepEqual((await client.get(ids[0])).report.result, { message: "Hello, 0!" });
  });

  test("a failing job ends dead with its reason", async () => {
    const id = await client.enqueue(chaos, { mode: "fail", message: "bad invoice" });
    const job = await client.wait(id, { timeoutMs: 30_000 });
    assert.equal(job.state, "dead");
    assert.equal(job.last_error.kind, "fail");
  });

  test("cancel a scheduled job", async () => {
    const id = await client.enqueue(hello, null, { run_at: "2999-01-01T00:00:00Z" });
    assert.equal(await client.cancel(id), "cancelled");
    await assert.rejects(client.cancel(id), (e) => e instanceof WasmqError && e.status === 409 && e.code === "already_final");
  });

  test("errors carry the server's error", async () => {
    await assert.rejects(client.enqueue(hello, null, { fuel: 0 }), (e) => e.status === 422 && e.code === "invalid_invocation" && e.field === "fuel");
    await assert.rejects(client.enqueue("sha256:" + "0".repeat(64)), (e) => e.code === "unknown_module" && e.field === "module");
    await assert.rejects(client.get("no-such-job"), (e) => e.status === 404 && e.code === "not_found");
    await assert.rejects(client.upload(new TextEncoder().encode("nope")), (e) => e.status === 422 && e.code === "invalid_module");
  });

  test("tokens are checked", async () => {
    await assert.rejects(new Client(URL, { token: "wrong-token-0123456789" }).get("x"), (e) => e.status === 401);
    const enqueuer = new Client(URL, { token: process.env.WASMQ_ENQUEUE_TOKEN });
    await assert.rejects(enqueuer.upload(new Uint8Array([0, 97, 115, 109])), (e) => e.status === 403 && e.code === "forbidden");
  });
});
