//! `word-count` — counts the words of a text: the map step of `map-reduce`.
//!
//! Args: `{"text": "…"}`. A word is a run of letters, digits or apostrophes, lowercased.
//! Result: `{"counts": {"word": n, …}}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmq_guest::JobError;

#[derive(Deserialize)]
struct Args {
    text: String,
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
    let mut counts = BTreeMap::new();
    for word in words(&args.text) {
        *counts.entry(word).or_insert(0) += 1;
    }
    Ok(Counts { counts })
}
