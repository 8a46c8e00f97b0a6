// A small client for the wasmq HTTP API, for Node >= 18 and browsers (uses `fetch`).
//
//   import { Client } from "./wasmq.mjs";
//   const client = new Client("http://127.0.0.1:8080", { token });
//   const module = await client.upload(bytes);
//   const id = await client.enqueue(module, { name: "Ada" });
//   const job = await client.wait(id);
//
// Every non-2xx response rejects with a `WasmqError` carrying the server's code, message and field.

/** States a job does not leave on its own. */
export const FINAL_STATES = Object.freeze(["succeeded", "dead", "cancelled"]);

/** An error response from the server (or none at all: `status` 0). */
export class WasmqError extends Error {
  constructor(status, code, message, field = null) {
    super(`${status} ${code}: ${message}${field ? ` (field \`${field}\`)` : ""}`);
    this.name = "WasmqError";
    this.status = status;
    this.code = code;
    this.field = field;
    this.serverMessage = message;
  }
}

export class Client {
  /**
   * @param {string} url the server, e.g. `http://127.0.0.1:8080`
   * @param {{ token?: string, fetch?: typeof fetch }} [options]
   */
  constructor(url, { token, fetch: fetchImpl } = {}) {
    this.url = url.replace(/\/+$/, "");
    this.token = token;
    this.fetch = fetchImpl ?? globalThis.fetch.bind(globalThis);
  }

  async #request(method, path, { body, contentType = "application/json", query } = {}) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== null) params.set(k, String(v));
    const qs = params.toString();
    const url = this.url + path + (qs ? `?${qs}` : "");
    const headers = {};
    if (body !== undefined) headers["content-type"] = contentType;
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    let resp;
    try {
      resp = await this.fetch(url, { method, headers, body });
    } catch (e) {
      throw new WasmqError(0, "unreachable", `cannot reach ${this.url}: ${e.message}`);
    }
    const text = await resp.text();
    if (!resp.ok) {
      let err;
      try {
        err = JSON.parse(text).error;
      } catch {
        throw new WasmqError(resp.status, "http_error", text);
      }
      throw new WasmqError(resp.status, err.code, err.message, err.field ?? null);
    }
    return text ? JSON.parse(text) : null;
  }

  /** Uploads a job component; resolves to its `sha256:…` address. */
  async upload(bytes) {
    const r = await this.#request("POST", "/v1/modules", { body: bytes, contentType: "application/wasm" });
    return r.module;
  }

  /** Enqueues one invocation; resolves to the job id. */
  async enqueue(module, args = null, options = {}) {
    const r = await this.#request("POST", "/v1/jobs", { body: JSON.stringify({ module, args, ...options }) });
    return r.id;
  }

  /** Enqueues invocations together: all are checked before any is enqueued. */
  async enqueueMany(invocations) {
    const r = await this.#request("POST", "/v1/jobs", { body: JSON.stringify({ jobs: invocations }) });
    return r.jobs.map((j) => j.id);
  }

  /** The job's current record. */
  async get(id, { queue } = {}) {
    return this.#request("GET", `/v1/jobs/${encodeURIComponent(id)}`, { query: { queue } });
  }

  /** Waits (long polls) until the job ends or `timeoutMs` passes; resolves to its record. */
  async wait(id, { timeoutMs = 60_000, queue } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const chunk = Math.max(1, Math.min(60, Math.floor((deadline - Date.now()) / 1000)));
      const job = await this.#request("GET", `/v1/jobs/${encodeURIComponent(id)}`, {
        query: { queue, wait: `${chunk}s` },
      });
      if (FINAL_STATES.includes(job.state) || Date.now() >= deadline) return job;
    }
  }

  /** Cancels the job: `"cancelled"` if it was waiting, `"cancelling"` if it is running. */
  async cancel(id, { queue } = {}) {
    const r = await this.#request("DELETE", `/v1/jobs/${encodeURIComponent(id)}`, { query: { queue } });
    return r.outcome;
  }
}
