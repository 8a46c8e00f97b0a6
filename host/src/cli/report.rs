//! How the CLI shows a run's outcome: one JSON object (`--json`) or a short human summary.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::broker::JobRecord;
use crate::invocation::bytes_to_json;
use crate::job::{Captured, HttpUse, LogRecord, Progress};
use crate::sandbox::{JobModule, RunOutcome};
use crate::time::format_time;

/// The outcome as one JSON object (the shape `wasmq run --json` prints).
pub(crate) fn outcome_json(module: &JobModule, outcome: &RunOutcome) -> Value {
    let (status, result, error) = match &outcome.result {
        Ok(bytes) => ("succeeded", bytes_to_json(bytes), Value::Null),
        Err(f) => (
            "failed",
            Value::Null,
            json!({ "kind": f.kind(), "message": f.to_string(), "retryable": f.is_retryable(), "detail": f }),
        ),
    };
    json!({
        "module": module.hash(),
        "status": status,
        "result": result,
        "error": error,
        "fuel_used": outcome.fuel_used,
        "fuel_budget": outcome.fuel_budget,
        "wall_time_ms": outcome.wall_time.as_secs_f64() * 1e3,
        "stdout": outcome.stdout,
        "stderr": outcome.stderr,
        "logs": outcome.logs,
        "logs_dropped": outcome.logs_dropped,
        "progress": outcome.progress,
        "http": outcome.http,
        "load": { "origin": module.origin(), "ms": module.load_time().as_secs_f64() * 1e3 },
    })
}

/// The outcome for a person.
pub(crate) fn outcome_text(module: &JobModule, outcome: &RunOutcome) -> String {
    let mut out = String::new();
    let load = match module.origin() {
        crate::sandbox::ModuleOrigin::Compiled => "compiled",
        crate::sandbox::ModuleOrigin::DiskCache => "loaded from cache",
        crate::sandbox::ModuleOrigin::Memory => "already loaded",
    };
    let timing = format!(
        "{:.2} ms · fuel {} of {} · module {load} in {:.1} ms",
        outcome.wall_time.as_secs_f64() * 1e3,
        group(outcome.fuel_used),
        group(outcome.fuel_budget),
        module.load_time().as_secs_f64() * 1e3,
    );
    match &outcome.result {
        Ok(bytes) => {
            let _ = writeln!(out, "succeeded in {timing}");
            let result = bytes_to_json(bytes);
            let _ = writeln!(
                out,
                "result: {}",
                serde_json::to_string_pretty(&result).unwrap_or_default()
            );
        }
        Err(f) => {
            let retry = if f.is_retryable() {
                "retryable"
            } else {
                "permanent"
            };
            let _ = writeln!(out, "failed ({}, {retry}) after {timing}", f.kind());
            let _ = writeln!(out, "error: {f}");
        }
    }
    stream(&mut out, "stdout", &outcome.stdout);
    stream(&mut out, "stderr", &outcome.stderr);
    logs_and_progress(
        &mut out,
        &outcome.logs,
        outcome.logs_dropped,
        outcome.progress.as_ref(),
    );
    http_uses(&mut out, &outcome.http);
    out
}

/// A job's record for a person (`wasmq job`, `enqueue --wait`).
pub(crate) fn record_text(r: &JobRecord) -> String {
    let mut out = String::new();
    let inv = &r.invocation;
    let _ = writeln!(
        out,
        "job {} on queue `{}`: {}",
        r.id,
        r.queue,
        r.state.as_str()
    );
    let _ = writeln!(out, "module: {}", inv.module);
    let _ = writeln!(out, "attempts: {} of {}", r.attempts, inv.max_attempts);
    let mut times = vec![format!("enqueued {}", format_time(r.enqueued_at_ms))];
    if let Some(t) = r.started_at_ms {
        times.push(format!("last started {}", format_time(t)));
    }
    if let Some(t) = r.finished_at_ms {
        times.push(format!("finished {}", format_time(t)));
    }
    let _ = writeln!(out, "{}", times.join(" · "));
    if let Some(w) = &r.worker {
        let _ = writeln!(out, "worker: {w}");
    }
    if let Some(e) = &r.last_error {
        let cut = if e.truncated {
            " [cut at the operator's --max-error-kb]"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "last error (attempt {}, {}): {}{cut}",
            e.attempt, e.kind, e.message
        );
    }
    if let Some(rep) = &r.report {
        let _ = writeln!(
            out,
            "attempt {}: {:.2} ms · fuel {}",
            rep.attempt,
            rep.wall_ms,
            group(rep.fuel_used)
        );
        if let Some(result) = &rep.result {
            let _ = writeln!(
                out,
                "result: {}",
                serde_json::to_string_pretty(result).unwrap_or_default()
            );
        }
        if !rep.sub_jobs.is_empty() {
            let _ = writeln!(out, "sub-jobs: {}", rep.sub_jobs.join(", "));
        }
        stream(&mut out, "stdout", &rep.stdout);
        stream(&mut out, "stderr", &rep.stderr);
        logs_and_progress(&mut out, &rep.logs, rep.logs_dropped, rep.progress.as_ref());
        http_uses(&mut out, &rep.http);
    }
    out
}

fn http_uses(out: &mut String, uses: &[HttpUse]) {
    if !uses.is_empty() {
        let _ = writeln!(out, "outbound HTTP:");
        for u in uses {
            let failed = if u.failed > 0 {
                format!(" ({} failed)", u.failed)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {}: {} calls{failed} · {} B sent · {} B received · waited {} ms",
                u.destination,
                u.calls,
                group(u.bytes_sent),
                group(u.bytes_received),
                group(u.wait_ms)
            );
        }
    }
}

fn logs_and_progress(
    out: &mut String,
    logs: &[LogRecord],
    dropped: u64,
    progress: Option<&Progress>,
) {
    if !logs.is_empty() {
        let _ = writeln!(out, "logs:");
        for r in logs {
            let _ = writeln!(
                out,
                "  +{:>5} ms {:<5} {}",
                r.at_ms,
                format!("{:?}", r.level).to_lowercase(),
                r.message
            );
        }
        if dropped > 0 {
            let _ = writeln!(out, "  ({dropped} more records dropped)");
        }
    }
    if let Some(p) = progress {
        let _ = writeln!(
            out,
            "progress: {}%{}",
            p.percent,
            p.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
}

fn stream(out: &mut String, name: &str, c: &Captured) {
    if c.total_bytes == 0 {
        return;
    }
    if c.truncated {
        let _ = writeln!(
            out,
            "{name}: {} bytes written, first {} kept (truncated):",
            c.total_bytes,
            c.text.len()
        );
        let tail: String = c.text.chars().take(400).collect();
        let _ = writeln!(out, "{tail}…");
    } else {
        let _ = writeln!(out, "{name}:");
        let _ = write!(out, "{}", c.text);
        if !c.text.ends_with('\n') {
            out.push('\n');
        }
    }
}

/// 1234567 → "1,234,567".
pub(crate) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints median, p99 and min of `samples`; returns the median.
pub(crate) fn timings(name: &str, samples: &mut [Duration]) -> Duration {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (median, p99, min) = (at(0.5), at(0.99), samples[0]);
    let fmt = |d: Duration| {
        if us(d) >= 10_000.0 {
            format!("{:.1} ms", us(d) / 1e3)
        } else {
            format!("{:.1} µs", us(d))
        }
    };
    println!(
        "{name}: median {} · p99 {} · min {} (n={})",
        fmt(median),
        fmt(p99),
        fmt(min),
        samples.len()
    );
    median
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_thousands() {
        assert_eq!(super::group(0), "0");
        assert_eq!(super::group(999), "999");
        assert_eq!(super::group(1000), "1,000");
        assert_eq!(super::group(1234567), "1,234,567");
    }
}
