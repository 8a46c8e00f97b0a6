// `js-partner-sync` — `partner-sync` in JavaScript: fetch a page of records from a partner API,
// clean them, and store them through another API (`sample-jobs/partner-sync` is the Rust
// original).
//
// Args: `{"source": "<url>", "page": n, "sink": "<url>"}`. Fetches `GET <source>?page=n` (a JSON
// array of objects), keeps the records that have an email and normalises them — `id` as is,
// `name` trimmed with inner spaces collapsed and each word capitalised, `email` trimmed and
// lowercased, `amount` (a number or a numeric string) as a number of cents — then POSTs them as a
// JSON array to `sink` with `Authorization: Bearer <SINK_TOKEN>`, the secret the operator granted
// it. Result: `{"fetched": n, "stored": n}`. A 5xx or 429, or the network failing, is retried; a
// 4xx, a denied destination or a missing secret is not.

import { Fail, Retry, job, log, secret } from "../../guest-sdk/js/wasmq_job.js";

function check(what, response) {
  if (response.ok) return;
  if (response.status === 429 || response.status >= 500) {
    throw new Retry(`${what} answered ${response.status}`);
  }
  throw new Fail(`${what} answered ${response.status}`);
}

function cents(amount) {
  const n = Number(amount);
  return Number.isFinite(n) ? Math.round(n * 100) : 0;
}

function clean(record) {
  const email = record?.email;
  if (typeof email !== "string" || !email.includes("@")) return null;
  const name = typeof record.name === "string" ? record.name : "";
  return {
    id: record.id ?? null,
    name: name
      .split(/\s+/)
      .filter((w) => w)
      .map((w) => w[0].toUpperCase() + w.slice(1).toLowerCase())
      .join(" "),
    email: email.trim().toLowerCase(),
    amount_cents: cents(record.amount),
  };
}

/** `fetch`, with a refused or failed request told apart: denied is for good, the rest retried. */
async function call(url, init) {
  try {
    return await fetch(url, init);
  } catch (e) {
    const text = String(e?.message ?? e);
    if (/denied/i.test(text)) throw new Fail(`HTTP request denied: ${text}`);
    throw new Retry(`HTTP request failed: ${text}`);
  }
}

export const run = job(async (args) => {
  const token = secret("SINK_TOKEN");
  const separator = args.source.includes("?") ? "&" : "?";
  const page = await call(`${args.source}${separator}page=${args.page}`);
  check("the partner API", page);
  const records = await page.json();
  const cleaned = records.map(clean).filter((r) => r !== null);
  log.info(`page ${args.page}: ${records.length} records, ${cleaned.length} kept`);
  const stored = await call(args.sink, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(cleaned),
  });
  check("the sink", stored);
  return { fetched: records.length, stored: cleaned.length };
});
