//! `partner-sync` — the work wasmq exists for: fetch a page of records from a partner API, clean
//! them, and store them through another API.
//!
//! Args: `{"source": "<url>", "page": n, "sink": "<url>"}`. Fetches `GET <source>?page=n` (a JSON
//! array of objects), keeps the records that have an email and normalises them — `id` as is,
//! `name` trimmed with inner spaces collapsed and each word capitalised, `email` trimmed and
//! lowercased, `amount` (a number or a numeric string) as a number of cents — then POSTs them as
//! a JSON array to `sink` with `Authorization: Bearer <SINK_TOKEN>`, the secret the operator
//! granted it. Result: `{"fetched": n, "stored": n}`.
//!
//! A partner answering 5xx, or the network failing, is retried; a 4xx, a denied destination or a
//! missing secret is not (retrying cannot fix them).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wasmq_guest::JobError;
use wasmq_guest::http::{self, Error as HttpError, Request};

#[derive(Deserialize)]
struct Args {
    source: String,
    page: u32,
    sink: String,
}

#[derive(Serialize)]
struct Synced {
    fetched: usize,
    stored: usize,
}

#[derive(Serialize)]
struct Record {
    id: Value,
    name: String,
    email: String,
    amount_cents: i64,
}

fn http_error(e: HttpError) -> JobError {
    match e {
        HttpError::Failed(m) => JobError::retry(m),
        other => JobError::fail(other.to_string()),
    }
}

/// Retries a 5xx and 429, fails any other status outside 2xx.
fn check(what: &str, response: &http::Response) -> Result<(), JobError> {
    match response.status {
        200..=299 => Ok(()),
        429 | 500..=599 => Err(JobError::retry(format!(
            "{what} answered {}",
            response.status
        ))),
        status => Err(JobError::fail(format!("{what} answered {status}"))),
    }
}

fn clean_name(raw: &str) -> String {
    raw.split_whitespace()
        .map(|word| {
            let lower = word.to_lowercase();
            let mut chars = lower.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn cents(amount: &Value) -> Option<i64> {
    let number = match amount {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    Some((number * 100.0).round() as i64)
}

fn clean(record: &Value) -> Option<Record> {
    let email = record.get("email")?.as_str()?.trim().to_lowercase();
    if !email.contains('@') {
        return None;
    }
    Some(Record {
        id: record.get("id").cloned().unwrap_or(Value::Null),
        name: clean_name(record.get("name").and_then(Value::as_str).unwrap_or("")),
        email,
        amount_cents: record.get("amount").and_then(cents).unwrap_or(0),
    })
}

#[wasmq_guest::job]
fn partner_sync(args: Args) -> Result<Synced, JobError> {
    let token = wasmq_guest::secret("SINK_TOKEN").map_err(JobError::fail)?;
    let separator = if args.source.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}page={}", args.source, args.page);
    let page = http::get(&url).map_err(http_error)?;
    check("the partner API", &page)?;
    let records: Vec<Value> = page
        .json()
        .map_err(|e| JobError::fail(format!("page {} is not a JSON array: {e}", args.page)))?;
    let cleaned: Vec<Record> = records.iter().filter_map(clean).collect();
    wasmq_guest::log::info(&format!(
        "page {}: {} records, {} kept",
        args.page,
        records.len(),
        cleaned.len()
    ));
    let body = serde_json::to_vec(&cleaned).map_err(|e| JobError::fail(e.to_string()))?;
    let stored = Request::new("POST", &args.sink)
        .header("content-type", "application/json")
        .header("authorization", &format!("Bearer {token}"))
        .body(body)
        .send()
        .map_err(http_error)?;
    check("the sink", &stored)?;
    Ok(Synced {
        fetched: records.len(),
        stored: cleaned.len(),
    })
}
