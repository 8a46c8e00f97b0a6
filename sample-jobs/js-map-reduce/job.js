// `js-map-reduce` — `map-reduce` in JavaScript: splits a text into chunks, counts each chunk's
// words in a sub-job of any language, awaits them all and merges the counts.
//
// Args: `{"text": "…", "chunks": n, "counter": "sha256:<a word-count job>"}`. Result:
// `{"counts": {"word": n, …}}`. Each sub-job is keyed by its chunk (`chunk-0`, …), so this job
// running again re-attaches to them; one that died throws `Retry` with its reason.

import { Fail, enqueue, joinAll, job, log } from "../../guest-sdk/js/wasmq_job.js";

function chunks(text, n) {
  const words = text.split(/\s+/).filter(Boolean);
  n = Math.max(1, Math.min(n, words.length || 1));
  return Array.from({ length: n }, (_, i) =>
    words.slice(Math.floor((i * words.length) / n), Math.floor(((i + 1) * words.length) / n)).join(" "),
  );
}

export const run = job((args) => {
  const n = args.chunks ?? 0;
  if (!(n >= 1 && n <= 1000)) throw new Fail("`chunks` must be 1 to 1000");
  const handles = chunks(args.text, n).map((piece, i) => enqueue(args.counter, { text: piece }, { key: `chunk-${i}` }));
  log.info(`waiting for ${handles.length} word counts`);
  const counts = {};
  for (const part of joinAll(handles)) {
    for (const [word, k] of Object.entries(part.counts)) counts[word] = (counts[word] ?? 0) + k;
  }
  return { counts };
});
