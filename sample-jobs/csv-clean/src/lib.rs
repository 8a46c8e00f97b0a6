//! `csv-clean` — the cleaning step of a typical import pipeline: parse CSV, normalise it, drop
//! empty and duplicate rows, emit JSON.
//!
//! Args: `{"csv": "<text with a header row>", "key": ["email"]}` (`key` is optional: the columns
//! that make two rows duplicates; all columns when left out).
//!
//! The rules are exact so that jobs in other languages can give byte-identical output:
//! 1. header names are trimmed, lowercased, and every run of characters other than `a-z0-9`
//!    becomes one `_`, with leading and trailing `_` removed;
//! 2. every cell is trimmed and each run of whitespace inside it becomes one space;
//! 3. cells of a column whose name ends in `email` are lowercased;
//! 4. rows whose cells are all empty are dropped (`empty`);
//! 5. a row equal to an earlier one on the key columns is dropped (`duplicates`).
//!
//! Result: `{"columns": [...], "rows": [[...]], "stats": {"input_rows", "output_rows", "empty",
//! "duplicates"}}`. A row with the wrong number of fields, or a key naming no column, fails the
//! job for good: retrying cannot fix the input.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use wasmq_guest::JobError;

#[derive(Deserialize)]
struct Args {
    csv: String,
    #[serde(default)]
    key: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Cleaned {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
    stats: Stats,
}

#[derive(Serialize)]
struct Stats {
    input_rows: usize,
    output_rows: usize,
    empty: usize,
    duplicates: usize,
}

fn normalise_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending_sep = false;
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_sep && !out.is_empty() {
                out.push('_');
            }
            pending_sep = false;
            out.push(c);
        } else {
            pending_sep = true;
        }
    }
    out
}

fn normalise_cell(cell: &str) -> String {
    cell.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[wasmq_guest::job]
fn clean(args: Args) -> Result<Cleaned, JobError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(args.csv.as_bytes());
    let columns: Vec<String> = reader
        .headers()
        .map_err(|e| JobError::fail(format!("invalid CSV header: {e}")))?
        .iter()
        .map(normalise_header)
        .collect();
    let email_cols: Vec<bool> = columns.iter().map(|c| c.ends_with("email")).collect();
    let key_idx: Vec<usize> = match &args.key {
        None => (0..columns.len()).collect(),
        Some(names) => names
            .iter()
            .map(|k| {
                let k = normalise_header(k);
                columns.iter().position(|c| *c == k).ok_or_else(|| {
                    JobError::fail(format!("key column `{k}` is not in the header {columns:?}"))
                })
            })
            .collect::<Result<_, _>>()?,
    };

    let mut seen = HashSet::new();
    let mut stats = Stats {
        input_rows: 0,
        output_rows: 0,
        empty: 0,
        duplicates: 0,
    };
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| JobError::fail(format!("invalid CSV: {e}")))?;
        stats.input_rows += 1;
        let row: Vec<String> = record
            .iter()
            .zip(&email_cols)
            .map(|(cell, &is_email)| {
                let cell = normalise_cell(cell);
                if is_email { cell.to_lowercase() } else { cell }
            })
            .collect();
        if row.iter().all(String::is_empty) {
            stats.empty += 1;
            continue;
        }
        let key: Vec<&str> = key_idx.iter().map(|&i| row[i].as_str()).collect();
        if !seen.insert(key.join("\u{1f}")) {
            stats.duplicates += 1;
            continue;
        }
        rows.push(row);
    }
    stats.output_rows = rows.len();
    Ok(Cleaned {
        columns,
        rows,
        stats,
    })
}
