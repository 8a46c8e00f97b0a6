//! `chaos` — the adversarial guest the tests use. Its behaviour is picked by `mode` in its args,
//! so one component exercises every sandbox limit, both obeyed and violated.
//!
//! | `mode`    | extra args        | what it does |
//! |-----------|-------------------|--------------|
//! | `ok`      |                   | returns `{"ok": true}` |
//! | `spin`    | `iterations`?     | burns CPU: forever, or for `iterations` rounds |
//! | `alloc`   | `mb`?             | allocates and touches memory: `mb` MiB, or 1 MiB at a time until refused |
//! | `recurse` | `depth`?          | recurses: `depth` frames, or until the stack overflows |
//! | `sleep`   | `ms`              | sleeps in a WASI clock call (blocked in the host, not spinning) |
//! | `panic`   | `message`?        | panics |
//! | `trap`    |                   | executes `unreachable` directly |
//! | `print`   | `bytes`, `stream`?| writes `bytes` bytes to stdout (or `"stderr"`) |
//! | `log`     | `count`?          | writes `count` log records and reports progress |
//! | `steps`   | `steps`, `ms`     | sleeps `ms` then reports progress, `steps` times ("step i of n") |
//! | `big`     | `bytes`           | returns a result of `bytes` bytes (a JSON string) |
//! | `retry`   | `message`?, `repeat`? | returns `job-error::retry` (the message `repeat` times) |
//! | `fail`    | `message`?, `repeat`? | returns `job-error::fail` (the message `repeat` times) |
//! | `flaky`   | `failures`        | returns `retry` on the first `failures` attempts, then succeeds |
//! | `enqueue` | `module`, `args`?, `retry_attempts`?, `pad`? | enqueues one sub-job (with `pad` bytes of args when given) and returns its id; on the first `retry_attempts` attempts returns `retry` after enqueueing |
//! | `join`    | `module`, `args`?, `count`?, `first`?, `timeout_ms`?, `propagate`? | enqueues `count` (1) sub-jobs of `module`, then waits for them: with `propagate`, joins all with `?` (a dead one retries this job) and returns `{"results": […]}`; otherwise returns `{"outcomes": […]}` from `wait` (`first`, `timeout_ms`), each `{"state", "result"?, "kind"?, "message"?}` |
//! | `probe`   | `addr`?           | reports what ambient authority it has: env, args, files, sockets |
//! | `leak`    | `secret`, `fail`? | reads secret `secret` and writes it everywhere: stdout, stderr, a log record, a progress note, and the result (or, with `fail`, the error message) |

use std::hint::black_box;
use std::io::Write;

use serde::Deserialize;
use serde_json::{Value, json};
use wasmq_guest::{JobError, JobInfo, Outcome};

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
enum Mode {
    Ok,
    Spin {
        iterations: Option<u64>,
    },
    Alloc {
        mb: Option<u64>,
    },
    Recurse {
        depth: Option<u64>,
    },
    Sleep {
        ms: u64,
    },
    Steps {
        steps: u32,
        ms: u64,
    },
    Panic {
        message: Option<String>,
    },
    Trap,
    Print {
        bytes: u64,
        stream: Option<String>,
    },
    Log {
        count: Option<u32>,
    },
    Big {
        bytes: usize,
    },
    Retry {
        message: Option<String>,
        repeat: Option<usize>,
    },
    Fail {
        message: Option<String>,
        repeat: Option<usize>,
    },
    Flaky {
        failures: u32,
    },
    Enqueue {
        module: String,
        args: Option<Value>,
        retry_attempts: Option<u32>,
        pad: Option<usize>,
    },
    Join {
        module: String,
        args: Option<Value>,
        count: Option<u32>,
        first: Option<u32>,
        timeout_ms: Option<u64>,
        #[serde(default)]
        propagate: bool,
    },
    Probe {
        addr: Option<String>,
    },
    Leak {
        secret: String,
        #[serde(default)]
        fail: bool,
    },
}

/// Recurses `max` levels deep (or until the stack overflows). Only scalars, so every frame lives
/// on the wasm stack that the host bounds, not on the shadow stack in linear memory; the work after
/// the call keeps it from being turned into a loop.
#[inline(never)]
fn recurse(max: u64, level: u64) -> u64 {
    if level >= max {
        return level;
    }
    let below = recurse(max, level + 1);
    below.rotate_left((level % 63) as u32) ^ level
}

#[wasmq_guest::job]
fn chaos(info: &JobInfo, mode: Mode) -> Result<Value, JobError> {
    match mode {
        Mode::Ok => Ok(json!({"ok": true})),
        Mode::Leak { secret, fail } => {
            let value = wasmq_guest::secret(&secret).map_err(JobError::fail)?;
            println!("stdout: {value}");
            eprintln!("stderr: {value}");
            wasmq_guest::log::info(&format!("log: {value}"));
            wasmq_guest::progress(50, Some(&format!("note: {value}")));
            if fail {
                return Err(JobError::fail(format!("error: {value}")));
            }
            Ok(json!({ "leaked": value, "quoted": format!("\"{value}\"") }))
        }
        Mode::Spin { iterations } => {
            let mut x: u64 = 0;
            let mut i: u64 = 0;
            while iterations.is_none_or(|n| i < n) {
                x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
                i += 1;
            }
            Ok(json!({"iterations": i, "x": x}))
        }
        Mode::Alloc { mb } => {
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            loop {
                if mb.is_some_and(|limit| chunks.len() as u64 >= limit) {
                    break;
                }
                // `try_reserve` would turn the refusal into a clean error; a real runaway job just
                // allocates, so this does too and lets the allocator abort.
                let mut chunk = vec![0u8; 1 << 20];
                chunk[(chunks.len() * 4096) % (1 << 20)] = 1;
                chunks.push(black_box(chunk));
            }
            Ok(json!({"allocated_mb": chunks.len()}))
        }
        Mode::Recurse { depth } => {
            let max = depth.unwrap_or(u64::MAX);
            recurse(black_box(max), 0);
            Ok(json!({"depth": max}))
        }
        Mode::Sleep { ms } => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(json!({"slept_ms": ms}))
        }
        Mode::Panic { message } => panic!("{}", message.as_deref().unwrap_or("chaos panic")),
        Mode::Trap => {
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_arch = "wasm32"))]
            std::process::abort();
        }
        Mode::Print { bytes, stream } => {
            let line = [b'x'; 1023];
            let mut out: Box<dyn Write> = match stream.as_deref() {
                Some("stderr") => Box::new(std::io::stderr()),
                _ => Box::new(std::io::stdout()),
            };
            let mut left = bytes;
            while left > 0 {
                let n = left.min(1024);
                let mut chunk = line[..(n as usize).saturating_sub(1)].to_vec();
                chunk.push(b'\n');
                out.write_all(&chunk)?;
                left -= n;
            }
            out.flush()?;
            Ok(json!({"printed": bytes}))
        }
        Mode::Log { count } => {
            let count = count.unwrap_or(3);
            for i in 0..count {
                wasmq_guest::log::info(&format!("record {i}"));
                wasmq_guest::progress(((i + 1) * 100 / count.max(1)) as u8, None);
            }
            Ok(json!({"logged": count}))
        }
        Mode::Steps { steps, ms } => {
            for i in 1..=steps {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                let note = format!("step {i} of {steps}");
                wasmq_guest::progress((i * 100 / steps.max(1)) as u8, Some(&note));
            }
            Ok(json!({"steps": steps}))
        }
        Mode::Big { bytes } => Ok(Value::String("x".repeat(bytes.saturating_sub(2)))),
        Mode::Retry { message, repeat } => Err(JobError::retry(
            message
                .unwrap_or_else(|| "chaos retry".into())
                .repeat(repeat.unwrap_or(1)),
        )),
        Mode::Fail { message, repeat } => Err(JobError::fail(
            message
                .unwrap_or_else(|| "chaos fail".into())
                .repeat(repeat.unwrap_or(1)),
        )),
        Mode::Flaky { failures } => {
            if info.attempt <= failures {
                Err(JobError::retry(format!(
                    "flaky: attempt {} of {} planned failures",
                    info.attempt, failures
                )))
            } else {
                Ok(json!({"succeeded_on_attempt": info.attempt}))
            }
        }
        Mode::Probe { addr } => {
            let outcome = |r: std::io::Result<()>| match r {
                Ok(()) => "allowed".to_owned(),
                Err(e) => format!("denied: {e}"),
            };
            let read_file = outcome(std::fs::read("/etc/passwd").map(drop));
            let list_root = outcome(std::fs::read_dir("/").map(drop));
            let write_file = outcome(std::fs::write("probe.txt", b"x"));
            let addr = addr.unwrap_or_else(|| "127.0.0.1:80".to_owned());
            let tcp = outcome(std::net::TcpStream::connect(addr.as_str()).map(drop));
            let dns = outcome(std::net::ToSocketAddrs::to_socket_addrs("localhost:80").map(drop));
            Ok(json!({
                "env": std::env::vars().count(),
                "args": std::env::args().count(),
                "cwd": std::env::current_dir().ok().map(|p| p.display().to_string()),
                "read_file": read_file,
                "list_root": list_root,
                "write_file": write_file,
                "tcp": tcp,
                "dns": dns,
            }))
        }
        Mode::Enqueue {
            module,
            args,
            retry_attempts,
            pad,
        } => {
            let args = match pad {
                Some(n) => Value::String("x".repeat(n.saturating_sub(2))),
                None => args.unwrap_or(Value::Null),
            };
            let id = wasmq_guest::enqueue(&module, &args)
                .map_err(JobError::fail)?
                .id()
                .to_owned();
            if info.attempt <= retry_attempts.unwrap_or(0) {
                return Err(JobError::retry(format!("enqueued {id}, then failed")));
            }
            Ok(json!({"enqueued": id}))
        }
        Mode::Join {
            module,
            args,
            count,
            first,
            timeout_ms,
            propagate,
        } => {
            let args = args.unwrap_or(Value::Null);
            let handles = (0..count.unwrap_or(1))
                .map(|_| wasmq_guest::enqueue(&module, &args))
                .collect::<Result<Vec<_>, _>>()
                .map_err(JobError::fail)?;
            if propagate {
                let results: Vec<Value> = wasmq_guest::join_all(&handles)?;
                return Ok(json!({"results": results}));
            }
            let outcomes = wasmq_guest::wait(
                &handles,
                first,
                timeout_ms.map(std::time::Duration::from_millis),
            )
            .map_err(JobError::retry)?;
            let outcomes: Vec<Value> = outcomes
                .into_iter()
                .map(|o| match o {
                    Outcome::Done(bytes) => json!({
                        "state": "done",
                        "result": serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
                    }),
                    Outcome::Dead { kind, message } => {
                        json!({"state": "dead", "kind": kind, "message": message})
                    }
                    Outcome::Cancelled => json!({"state": "cancelled"}),
                    Outcome::Pending => json!({"state": "pending"}),
                })
                .collect();
            Ok(json!({"outcomes": outcomes}))
        }
    }
}
