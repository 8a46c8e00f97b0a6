// `js-word-count` — counts the words of a text, in JavaScript: the map step of a map-reduce.
//
// Args: `{"text": "…"}`. A word is a run of letters, digits or apostrophes, lowercased (the same
// rule as the Rust `word-count`). Result: `{"counts": {"word": n, …}}`.

import { job } from "../../guest-sdk/js/wasmq_job.js";

// A letter has two cases (this build of SpiderMonkey has no `\p{L}` in regular expressions).
const inWord = (c) => c.toLowerCase() !== c.toUpperCase() || (c >= "0" && c <= "9") || c === "'";

export const run = job((args) => {
  const counts = {};
  const add = (raw) => {
    const word = raw.replace(/^'+|'+$/g, "").toLowerCase();
    if (word) counts[word] = (counts[word] ?? 0) + 1;
  };
  let word = "";
  for (const c of args.text) {
    if (inWord(c)) {
      word += c;
    } else if (word) {
      add(word);
      word = "";
    }
  }
  if (word) add(word);
  return { counts };
});
