//! `/metrics` in the Prometheus text format.
//!
//! Queue depths and running totals come from the broker at scrape time, so every `serve` process
//! reports the same numbers for all workers together; the duration and fuel histograms are this
//! process's in-process worker's. Written by hand rather than with a client library: the values are
//! read fresh from Redis on each scrape, which those libraries' registries model awkwardly, and the
//! format is a few lines of text.

use std::fmt::Write as _;

use crate::broker::QueueCounts;
use crate::worker::{Counters, Histogram};

/// The exposition text.
pub fn render(queues: &[QueueCounts], workers: usize, worker: Option<&Counters>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP wasmq_workers Workers heard from in the last minute."
    );
    let _ = writeln!(out, "# TYPE wasmq_workers gauge");
    let _ = writeln!(out, "wasmq_workers {workers}");
    type Total = fn(&QueueCounts) -> u64;
    let totals: [(&str, &str, Total); 7] = [
        ("enqueued", "Jobs accepted.", |q| q.totals.enqueued),
        ("succeeded", "Jobs that succeeded.", |q| q.totals.succeeded),
        ("failed", "Attempts that failed (retried or not).", |q| {
            q.totals.failed
        }),
        (
            "retried",
            "Attempts scheduled again after a failure.",
            |q| q.totals.retried,
        ),
        ("dead", "Jobs moved to the dead set.", |q| q.totals.dead),
        ("cancelled", "Jobs cancelled.", |q| q.totals.cancelled),
        (
            "recovered",
            "Expired leases returned to ready (a worker died or lost Redis).",
            |q| q.totals.recovered,
        ),
    ];
    for (name, help, get) in totals {
        let _ = writeln!(out, "# HELP wasmq_jobs_{name}_total {help}");
        let _ = writeln!(out, "# TYPE wasmq_jobs_{name}_total counter");
        for q in queues {
            let _ = writeln!(
                out,
                "wasmq_jobs_{name}_total{{queue=\"{}\"}} {}",
                label(&q.queue),
                get(q)
            );
        }
    }
    let _ = writeln!(out, "# HELP wasmq_queue_jobs Jobs in each state, by queue.");
    let _ = writeln!(out, "# TYPE wasmq_queue_jobs gauge");
    for q in queues {
        for (state, n) in [
            ("ready", q.ready),
            ("scheduled", q.scheduled),
            ("leased", q.leased),
            ("dead", q.dead),
        ] {
            let _ = writeln!(
                out,
                "wasmq_queue_jobs{{queue=\"{}\",state=\"{state}\"}} {n}",
                label(&q.queue)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP wasmq_queue_oldest_ready_age_seconds How long the next job to run has waited since it was enqueued."
    );
    let _ = writeln!(out, "# TYPE wasmq_queue_oldest_ready_age_seconds gauge");
    let now = crate::time::now_ms();
    for q in queues {
        let age = q
            .oldest_ready_ms
            .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e3);
        let _ = writeln!(
            out,
            "wasmq_queue_oldest_ready_age_seconds{{queue=\"{}\"}} {age}",
            label(&q.queue)
        );
    }
    if let Some(w) = worker {
        histogram(
            &mut out,
            "wasmq_job_duration_seconds",
            "Wall time of attempts run by this process.",
            &w.duration,
        );
        histogram(
            &mut out,
            "wasmq_job_fuel",
            "Fuel used by attempts run by this process.",
            &w.fuel,
        );
    }
    out
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let (buckets, sum, count) = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (le, n) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
}

/// Escapes a label value (queue names are restricted already; this keeps the format valid anyway).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let mut q = QueueCounts {
            queue: "mail".into(),
            ready: 3,
            ..QueueCounts::default()
        };
        q.totals.succeeded = 7;
        let w = Counters::default();
        w.duration.observe(0.002);
        w.duration.observe(2.0);
        let text = render(&[q], 2, Some(&w));
        assert!(text.contains("wasmq_workers 2"), "{text}");
        assert!(
            text.contains("wasmq_jobs_succeeded_total{queue=\"mail\"} 7"),
            "{text}"
        );
        assert!(text.contains("wasmq_queue_jobs{queue=\"mail\",state=\"ready\"} 3"));
        assert!(text.contains("wasmq_job_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("wasmq_job_duration_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("wasmq_job_duration_seconds_count 2"));
        assert!(text.contains("# TYPE wasmq_job_fuel histogram"));
    }
}
