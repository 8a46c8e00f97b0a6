//! `word-count` — counts the words of a text: the map step of `map-reduce`.
//!
//! Args: `{"text": "…", "pause_ms": n?}`. A word is a run of letters, digits or apostrophes,
//! lowercased. `pause_ms` waits that long first (in the host, not spinning), to stand in for
//! slow work — the crash tests kill a parent while its children are still at it.
//! Result: `{"counts": {"word": n, …}}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmq_guest::JobError;

#[derive(Deserialize)]
struct Args {
    text: String,
    #[serde(default)]
    pause_ms: u64,
}

/// Word counts, the result of this job and of `map-reduce`.
#[derive(Serialize)]
struct Counts {
    counts: BTreeMap<String, u64>,
}

/// The words of `text`, lowercased.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

#[wasmq_guest::job]
fn word_count(args: Args) -> Result<Counts, JobError> {
    if args.pause_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(args.pause_ms));
    }
    let mut counts = BTreeMap::new();
    for word in words(&args.text) {
        *counts.entry(word).or_insert(0) += 1;
    }
    Ok(Counts { counts })
}
