//! `map-reduce` — splits a text into chunks, counts each chunk's words in a sub-job
//! (`word-count`), awaits them all and merges their counts.
//!
//! Args: `{"text": "…", "chunks": n, "counter": "sha256:<word-count>"}`, and optionally
//! `"queue"` (the sub-jobs' queue; this job's own by default) and `"pause_ms"` (passed to each
//! `word-count`). Result: `{"counts": {"word": n, …}}`, the same as one `word-count` of the whole
//! text.
//!
//! Each chunk's sub-job is named by its number (`chunk-0`, `chunk-1`, …), so when this job runs
//! again — a retry, or its worker died while it waited — it re-attaches to the same sub-jobs and
//! reads the counts they already stored; a sub-job that died makes this job retry with its reason
//! (`?` on the join).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use wasmq_guest::{JobError, Options};

#[derive(Deserialize)]
struct Args {
    text: String,
    chunks: usize,
    counter: String,
    queue: Option<String>,
    #[serde(default)]
    pause_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Counts {
    counts: BTreeMap<String, u64>,
}

/// `text` cut into `n` pieces of about as many words each (fewer when it has fewer than `n`
/// words), cut only at whitespace so that no word is split.
fn chunks(text: &str, n: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let n = n.clamp(1, words.len().max(1));
    (0..n)
        .map(|i| words[i * words.len() / n..(i + 1) * words.len() / n].join(" "))
        .collect()
}

#[wasmq_guest::job]
fn map_reduce(args: Args) -> Result<Counts, JobError> {
    if args.chunks == 0 || args.chunks > 1000 {
        return Err(JobError::fail("`chunks` must be 1 to 1000"));
    }
    let handles = chunks(&args.text, args.chunks)
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let options = Options {
                queue: args.queue.clone(),
                ..Options::key(format!("chunk-{i}"))
            };
            wasmq_guest::enqueue_with(
                &args.counter,
                &json!({ "text": piece, "pause_ms": args.pause_ms }),
                &options,
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| JobError::retry(format!("a chunk was not enqueued: {e}")))?;
    wasmq_guest::log::info(&format!("waiting for {} word counts", handles.len()));
    let parts: Vec<Counts> = wasmq_guest::join_all(&handles)?;
    let mut counts = BTreeMap::new();
    for part in parts {
        for (word, n) in part.counts {
            *counts.entry(word).or_insert(0) += n;
        }
    }
    Ok(Counts { counts })
}
