//! `fetch` — one outbound HTTP request, for trying a grant and for the host's tests.
//!
//! Args: `{"url": "https://api.example/x", "method": "GET", "headers": {"name": "value"},
//! "body": "text"}` (all but `url` optional). Result: `{"status": 200, "body": "<text>",
//! "bytes": n}` (the body decoded as UTF-8, lossily). A denied request is a permanent failure
//! (retrying cannot grant it); any other failure is retried.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmq_guest::JobError;
use wasmq_guest::http::{Error, Request};

#[derive(Deserialize)]
struct Args {
    url: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

fn get() -> String {
    "GET".to_owned()
}

#[derive(Serialize)]
struct Fetched {
    status: u16,
    body: String,
    bytes: usize,
}

#[wasmq_guest::job]
fn fetch(args: Args) -> Result<Fetched, JobError> {
    let mut request = Request::new(&args.method, &args.url).body(args.body.into_bytes());
    for (name, value) in &args.headers {
        request = request.header(name, value);
    }
    match request.send() {
        Ok(response) => Ok(Fetched {
            status: response.status,
            bytes: response.body.len(),
            body: String::from_utf8_lossy(&response.body).into_owned(),
        }),
        Err(e @ (Error::Denied | Error::Url(_))) => Err(JobError::fail(e.to_string())),
        Err(e) => Err(JobError::retry(e.to_string())),
    }
}
