// Upload a job, enqueue it, wait for the result — with the JavaScript client (Node >= 18).
// Needs WASMQ_URL, WASMQ_TOKEN, WASMQ_JOB.
import { readFile } from "node:fs/promises";

import { Client } from "../js/wasmq.mjs";

const client = new Client(process.env.WASMQ_URL, { token: process.env.WASMQ_TOKEN });
const module = await client.upload(await readFile(process.env.WASMQ_JOB));
const id = await client.enqueue(module, { name: "JavaScript" }, { max_attempts: 3 });
const job = await client.wait(id, { timeoutMs: 30_000 });
console.log(job.state, job.report.result.message);
