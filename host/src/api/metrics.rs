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
        let http = w.http.lock().expect("not poisoned");
        type Field = fn(&crate::job::HttpUse) -> f64;
        let series: [(&str, &str, Field); 5] = [
            (
                "calls",
                "Outbound HTTP calls granted and sent by this process's jobs.",
                |u| u.calls as f64,
            ),
            ("failed", "Of those, calls that ended in an error.", |u| {
                u.failed as f64
            }),
            ("sent_bytes", "Request body bytes sent.", |u| {
                u.bytes_sent as f64
            }),
            ("received_bytes", "Response body bytes received.", |u| {
                u.bytes_received as f64
            }),
            (
                "wait_seconds",
                "Time jobs spent waiting on calls (egress limit, connect, response).",
                |u| u.wait_ms as f64 / 1e3,
            ),
        ];
        for (name, help, get) in series {
            let _ = writeln!(out, "# HELP wasmq_http_{name}_total {help}");
            let _ = writeln!(out, "# TYPE wasmq_http_{name}_total counter");
            for u in http.values() {
                let _ = writeln!(
                    out,
                    "wasmq_http_{name}_total{{destination=\"{}\"}} {}",
                    label(&u.destination),
                    get(u)
                );
            }
        }
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

    #[test]
    fn outbound_http_is_counted_per_destination_and_bounded() {
        let w = Counters::default();
        let call = |d: &str| crate::job::HttpUse {
            destination: d.to_owned(),
            calls: 2,
            failed: 1,
            bytes_sent: 10,
            bytes_received: 300,
            wait_ms: 1500,
        };
        w.count_http(&[call("http://127.0.0.1:8080")]);
        w.count_http(&[call("http://127.0.0.1:8080")]);
        let text = render(&[], 1, Some(&w));
        for line in [
            "wasmq_http_calls_total{destination=\"http://127.0.0.1:8080\"} 4",
            "wasmq_http_failed_total{destination=\"http://127.0.0.1:8080\"} 2",
            "wasmq_http_sent_bytes_total{destination=\"http://127.0.0.1:8080\"} 20",
            "wasmq_http_received_bytes_total{destination=\"http://127.0.0.1:8080\"} 600",
            "wasmq_http_wait_seconds_total{destination=\"http://127.0.0.1:8080\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // A guest naming endless hosts under a wildcard grant cannot grow the series forever.
        for i in 0..1000 {
            w.count_http(&[call(&format!("https://h{i}.cdn.example:443"))]);
        }
        let http = w.http.lock().unwrap();
        assert_eq!(http.len(), crate::worker::MAX_HTTP_DESTINATIONS + 1);
        assert!(http["other"].calls > 0);
    }
}
