//! `fanout` — splits work into sub-jobs through the host's `enqueue` import.
//!
//! Args: `{"module": "sha256:<64 hex>", "count": 10, "args": {...}, "field": "index"}`. Enqueues
//! `count` jobs of `module`; when `args` is an object each copy gets its number (0-based) in the
//! field named by `field` (`"index"` when left out: `"page"` fans a `partner-sync` out one job
//! per page), otherwise the args are sent as they are. Result: `{"enqueued": ["<job id>", ...]}`. A refused enqueue is a
//! retryable failure (the queue may be briefly unavailable).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wasmq_guest::JobError;

#[derive(Deserialize)]
struct Args {
    module: String,
    count: u32,
    #[serde(default)]
    args: Value,
    #[serde(default = "index")]
    field: String,
}

fn index() -> String {
    "index".to_owned()
}

#[derive(Serialize)]
struct Fanned {
    enqueued: Vec<String>,
}

#[wasmq_guest::job]
fn fanout(args: Args) -> Result<Fanned, JobError> {
    let mut enqueued = Vec::with_capacity(args.count as usize);
    for index in 0..args.count {
        let mut sub = args.args.clone();
        if let Value::Object(map) = &mut sub {
            map.insert(args.field.clone(), Value::from(index));
        }
        let handle = wasmq_guest::enqueue(&args.module, &sub)
            .map_err(|e| JobError::retry(format!("sub-job {index} was not enqueued: {e}")))?;
        enqueued.push(handle.id().to_owned());
        let percent = ((index + 1) * 100 / args.count.max(1)) as u8;
        wasmq_guest::progress(percent, Some(&format!("{} of {}", index + 1, args.count)));
    }
    wasmq_guest::log::info(&format!(
        "enqueued {} sub-jobs of {}",
        enqueued.len(),
        args.module
    ));
    Ok(Fanned { enqueued })
}
