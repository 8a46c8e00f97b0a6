//! `wasmq egress-limit` and `wasmq egress-limits`: fleet-wide limits on HTTP destinations.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::broker::{ApiBroker, EgressLimit};
use crate::grant::normalize_host;

/// Flags of `wasmq egress-limit`.
#[derive(Debug, Args)]
pub(crate) struct EgressLimitArgs {
    /// The destination host (`api.partner.example`, `10.0.0.7`); every port of it.
    host: String,
    /// At most this many calls to it in flight at once, across every worker.
    #[arg(long)]
    concurrency: Option<u32>,
    /// At most this many calls to it started per `--per` (a sliding window), across every
    /// worker.
    #[arg(long, requires = "per")]
    rate: Option<u32>,
    /// The rate window (`1s`, `1m`).
    #[arg(long, value_parser = crate::time::parse_duration, requires = "rate")]
    per: Option<Duration>,
}

/// How a limit reads.
pub(crate) fn describe(limit: &EgressLimit) -> String {
    let mut parts = Vec::new();
    if let Some(c) = limit.concurrency {
        parts.push(format!("at most {c} calls at once"));
    }
    if let Some((n, per)) = limit.rate {
        parts.push(format!("at most {n} started per {per} ms"));
    }
    if parts.is_empty() {
        "no limit".to_owned()
    } else {
        parts.join(", ")
    }
}

pub(crate) async fn set(broker: &dyn ApiBroker, args: EgressLimitArgs) -> anyhow::Result<ExitCode> {
    let host = normalize_host(&args.host)?;
    let rate = args
        .rate
        .zip(args.per)
        .map(|(n, per)| (n, per.as_millis() as u64));
    let limit = EgressLimit {
        concurrency: args.concurrency,
        rate,
    };
    if let Err(e) = limit.check() {
        bail!(e);
    }
    broker.set_egress_limit(&host, &limit).await?;
    println!("{host}: {}", describe(&limit));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn list(broker: &dyn ApiBroker, json: bool) -> anyhow::Result<ExitCode> {
    let all = broker.egress_limits().await?;
    if json {
        let rows: Vec<_> = all
            .iter()
            .map(|(h, l)| serde_json::json!({ "host": h, "limit": l }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if all.is_empty() {
        println!("no egress limits");
    } else {
        for (host, limit) in &all {
            println!("{host}: {}", describe(limit));
        }
    }
    Ok(ExitCode::SUCCESS)
}
