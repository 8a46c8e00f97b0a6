// Types for wasmq.mjs.

export declare const FINAL_STATES: readonly ["succeeded", "dead", "cancelled"];

export type JobState = "ready" | "scheduled" | "leased" | "succeeded" | "dead" | "cancelled";

/** One job as any language writes it (docs/invocation.schema.json). */
export interface Invocation {
  module: string;
  args?: unknown;
  queue?: string;
  id?: string;
  max_attempts?: number;
  timeout_ms?: number;
  fuel?: number;
  memory_mb?: number;
  run_at?: string;
  priority?: number;
}

export type EnqueueOptions = Omit<Invocation, "module" | "args">;

export interface AttemptError {
  attempt: number;
  kind: string;
  message: string;
  at_ms: number;
}

export interface Captured {
  text: string;
  total_bytes: number;
  truncated: boolean;
}

export interface RunReport {
  attempt: number;
  worker: string;
  result?: unknown;
  stdout: Captured;
  stderr: Captured;
  logs: { level: string; message: string; at_ms: number }[];
  logs_dropped: number;
  progress: { percent: number; note: string | null } | null;
  fuel_used: number;
  wall_ms: number;
  sub_jobs?: string[];
}

export interface Job {
  id: string;
  queue: string;
  state: JobState;
  invocation: Invocation;
  attempts: number;
  enqueued_at_ms: number;
  started_at_ms: number | null;
  finished_at_ms: number | null;
  worker: string | null;
  last_error: AttemptError | null;
  progress: { percent: number; note: string | null } | null;
  report: RunReport | null;
}

export declare class WasmqError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field: string | null;
  readonly serverMessage: string;
}

export declare class Client {
  constructor(url: string, options?: { token?: string; fetch?: typeof fetch });
  upload(bytes: Uint8Array | ArrayBuffer | Blob): Promise<string>;
  enqueue(module: string, args?: unknown, options?: EnqueueOptions): Promise<string>;
  enqueueMany(invocations: Invocation[]): Promise<string[]>;
  get(id: string, options?: { queue?: string }): Promise<Job>;
  wait(id: string, options?: { timeoutMs?: number; queue?: string }): Promise<Job>;
  cancel(id: string, options?: { queue?: string }): Promise<"cancelled" | "cancelling">;
}
