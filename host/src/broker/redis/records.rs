//! Reading what the scripts stored: job hashes into [`JobRecord`]s, module index entries into
//! [`ModuleInfo`]s; anything that does not parse is reported as corrupt with its key.

use std::collections::HashMap;

use crate::broker::{BrokerError, JobRecord, ModuleInfo};
use crate::invocation::Invocation;
use crate::job::{AttemptError, JobState, Progress, RunReport};
use crate::modules::ModuleHash;

pub(super) fn corrupt(what: &str, reason: impl ToString) -> BrokerError {
    BrokerError::Corrupt {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

pub(super) fn parse_record(
    queue: &str,
    id: &str,
    mut map: HashMap<String, String>,
) -> Result<Option<JobRecord>, BrokerError> {
    if map.is_empty() {
        return Ok(None);
    }
    let what = format!("{queue}/{id}");
    let mut take = |field: &str| map.remove(field);
    let inv = take("inv").ok_or_else(|| corrupt(&what, "no `inv` field"))?;
    let invocation: Invocation =
        serde_json::from_str(&inv).map_err(|e| corrupt(&what, format!("`inv`: {e}")))?;
    let state = take("state")
        .and_then(|s| JobState::parse(&s))
        .ok_or_else(|| corrupt(&what, "missing or unknown `state`"))?;
    let num = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok());
    let last_error: Option<AttemptError> = take("err")
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt(&what, format!("`err`: {e}"))))
        .transpose()?;
    let errors: Vec<AttemptError> = match take("errs") {
        Some(lines) => lines
            .lines()
            .map(|l| serde_json::from_str(l).map_err(|e| corrupt(&what, format!("`errs`: {e}"))))
            .collect::<Result<_, _>>()?,
        None => last_error.iter().cloned().collect(),
    };
    let progress: Option<Progress> = take("progress")
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt(&what, format!("`progress`: {e}"))))
        .transpose()?;
    let report: Option<RunReport> = take("report")
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt(&what, format!("`report`: {e}"))))
        .transpose()?;
    Ok(Some(JobRecord {
        id: id.to_owned(),
        queue: queue.to_owned(),
        state,
        invocation,
        attempts: num(take("attempts")).unwrap_or(0) as u32,
        enqueued_at_ms: num(take("enq")).unwrap_or(0),
        started_at_ms: num(take("started")),
        finished_at_ms: num(take("fin")),
        worker: take("worker"),
        last_error,
        errors,
        progress,
        report,
        parent: take("parent")
            .as_deref()
            .and_then(super::lineage::parse_job_ref),
        children: take("children")
            .iter()
            .flat_map(|l| l.lines())
            .filter_map(super::lineage::parse_job_ref)
            .collect(),
    }))
}

pub(super) fn json_or_empty<T: serde::Serialize>(v: Option<&T>) -> String {
    v.map(|v| serde_json::to_string(v).expect("plain data serialises"))
        .unwrap_or_default()
}

pub(super) fn parse_module_info(hex: &str, info: &str) -> Result<ModuleInfo, BrokerError> {
    #[derive(serde::Deserialize)]
    struct Stored {
        size: u64,
        uploaded_at_ms: u64,
    }
    let hash: ModuleHash = format!("sha256:{hex}")
        .parse()
        .map_err(|e| corrupt(hex, e))?;
    let stored: Stored = serde_json::from_str(info).map_err(|e| corrupt(hex, e))?;
    Ok(ModuleInfo {
        hash,
        size: stored.size,
        uploaded_at_ms: stored.uploaded_at_ms,
    })
}
