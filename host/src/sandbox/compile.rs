//! Compiling untrusted components under a budget.
//!
//! Compiling is the one step where a hostile component costs the host more than the guest's own
//! limits allow: a few megabytes of straight-line code or of deeply nested blocks can keep
//! Cranelift busy for minutes and take gigabytes. So the host never compiles an uploaded
//! component in its own process. It hands the bytes to a child — the same binary,
//! `wasmq compile-module` — which lowers its own priority, caps its data segment
//! (`RLIMIT_DATA`) and CPU time (`RLIMIT_CPU`), compiles, checks the result against the job world
//! and writes the artifact to its stdout; the parent kills it at the wall-clock limit. A refusal
//! names the limit that was passed. Nothing reaches the artifact cache unless the child succeeded
//! and the parent's own checks passed.
//!
//! The child builds its engine from the same [`engine_config`](super::engine_config) as the
//! parent, without the pooling allocator (which does not change compiled code: a test holds the
//! two engines' compatibility hashes equal), so the artifact loads in the parent as if compiled
//! there.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::world::{LoadError, check_world};
use super::{bindings, engine_config, job_linker};

/// How uploaded components are compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileBudget {
    /// The `wasmq` binary to run as the compiler child. `None` compiles in this process with no
    /// budget: for an embedder that only loads trusted bytes (and for unit tests).
    pub program: Option<PathBuf>,
    /// Wall-clock limit of one compile.
    pub timeout: Duration,
    /// Memory limit of one compile (the child's data segment: heap and thread stacks).
    pub memory_bytes: u64,
    /// Compiles at once in this process; further ones wait their turn.
    pub concurrency: usize,
}

impl Default for CompileBudget {
    /// Sized from the costliest sample jobs, the 12–19 MB Python and JavaScript components:
    /// in a debug build on two cores `js-chaos` compiles in 12.5 s with a 456 MB peak and fails
    /// under a 256 MiB limit, `python-chaos` takes 10.6 s. A minute and 2 GiB leave five and four
    /// times that for a loaded machine or a bigger component, and still stop a bomb well before it
    /// hurts the host. One compile at a time: a compile already uses every core.
    fn default() -> Self {
        CompileBudget {
            program: None,
            timeout: Duration::from_secs(60),
            memory_bytes: 2 << 30,
            concurrency: 1,
        }
    }
}

/// How the child reports a refusal: one JSON object on its stderr.
#[derive(Debug, Serialize, Deserialize)]
struct Refused {
    why: Why,
    message: String,
}

/// Why the child refused a component.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Why {
    /// It does not fit the job world.
    World,
    /// It does not validate or compile.
    Invalid,
    /// Compiling it ran into the memory limit where wasmtime reports a failed allocation as an
    /// error (a failed `mmap`) rather than aborting.
    Memory,
}

/// The exit code of a child that refused the component (the refusal is on its stderr).
const REFUSED: u8 = 3;

/// Compiles `bytes` in a child process under `budget`; returns the serialized artifact.
pub(super) async fn in_child(
    program: &std::path::Path,
    budget: &CompileBudget,
    memory_reservation: Option<u64>,
    bytes: &[u8],
) -> Result<Vec<u8>, LoadError> {
    // CPU seconds as a backstop for the wall-clock limit: the parallel compile may use every
    // core, so allow twice the wall time.
    let cpu_seconds = budget.timeout.as_secs().saturating_mul(2).max(1);
    let mut command = tokio::process::Command::new(program);
    command
        .arg("compile-module")
        .arg("--memory-bytes")
        .arg(budget.memory_bytes.to_string())
        .arg("--cpu-seconds")
        .arg(cpu_seconds.to_string());
    if let Some(bytes) = memory_reservation {
        command.arg("--memory-reservation").arg(bytes.to_string());
    }
    let mut child = command
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            LoadError::Compiler(format!(
                "could not start the compiler `{} compile-module`: {e}",
                program.display()
            ))
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let input = bytes.to_vec();
    let feed = async move {
        // A child that dies early closes its end: its exit status says why.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
    };
    // The artifact cannot be larger than what the child may allocate.
    let limit = budget.memory_bytes;
    let collect = async move {
        let mut artifact = Vec::new();
        let mut errors = Vec::new();
        let mut out_pipe = (&mut stdout).take(limit);
        let mut err_pipe = (&mut stderr).take(64 << 10);
        let (out, err) = tokio::join!(
            out_pipe.read_to_end(&mut artifact),
            err_pipe.read_to_end(&mut errors),
        );
        (out.map(|_| artifact), err.map(|_| errors))
    };
    let work = async {
        let ((), (artifact, errors)) = tokio::join!(feed, collect);
        (child.wait().await, artifact, errors)
    };
    let Ok((status, artifact, errors)) = tokio::time::timeout(budget.timeout, work).await else {
        // Dropping `work` drops the child, which kills it (`kill_on_drop`).
        return Err(LoadError::TimeBudget {
            limit: budget.timeout,
        });
    };
    let status =
        status.map_err(|e| LoadError::Compiler(format!("waiting for the compiler: {e}")))?;
    let errors = errors.unwrap_or_default();
    if status.success() {
        return artifact.map_err(|e| LoadError::Compiler(format!("reading the artifact: {e}")));
    }
    if status.code() == Some(i32::from(REFUSED))
        && let Ok(refused) = serde_json::from_slice::<Refused>(&errors)
    {
        return Err(match refused.why {
            Why::World => LoadError::World(refused.message),
            Why::Invalid => LoadError::Invalid(refused.message),
            Why::Memory => LoadError::MemoryBudget {
                limit_bytes: budget.memory_bytes,
            },
        });
    }
    let said = String::from_utf8_lossy(&errors);
    use std::os::unix::process::ExitStatusExt as _;
    Err(match status.signal() {
        // A refused allocation aborts; past RLIMIT_CPU the kernel sends SIGXCPU, then SIGKILL.
        Some(libc::SIGABRT) if said.contains("memory allocation") => LoadError::MemoryBudget {
            limit_bytes: budget.memory_bytes,
        },
        Some(libc::SIGXCPU | libc::SIGKILL) => LoadError::TimeBudget {
            limit: budget.timeout,
        },
        _ => LoadError::Compiler(format!("the compiler failed ({status}): {}", said.trim())),
    })
}

/// `wasmq compile-module`: the child side. Reads a component on stdin, compiles it under the
/// given limits and writes the artifact to stdout; a component that is invalid or does not fit
/// the job world exits with code 3 and one JSON refusal on stderr.
pub fn child_main(
    memory_bytes: u64,
    cpu_seconds: u64,
    memory_reservation: Option<u64>,
) -> ExitCode {
    if let Err(e) = limit_self(memory_bytes, cpu_seconds) {
        eprintln!("wasmq compile-module: could not limit itself: {e}");
        return ExitCode::FAILURE;
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("wasmq compile-module: reading the component: {e}");
        return ExitCode::FAILURE;
    }
    let refuse = |why: Why, message: String| {
        let refused = serde_json::to_string(&Refused { why, message }).expect("plain data");
        eprint!("{refused}");
        ExitCode::from(REFUSED)
    };
    let engine = match wasmtime::Engine::new(&engine_config(memory_reservation)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("wasmq compile-module: building the engine: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let linker = match job_linker(&engine) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wasmq compile-module: building the linker: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let component = match wasmtime::component::Component::new(&engine, &bytes) {
        Ok(c) => c,
        Err(e) => {
            let message = format!("{e:#}");
            // ENOMEM from an `mmap` under RLIMIT_DATA.
            let why = if message.contains("mmap failed")
                || message.contains("Cannot allocate memory")
                || message.contains("os error 12")
                || message.contains("out of memory")
            {
                Why::Memory
            } else {
                Why::Invalid
            };
            return refuse(why, message);
        }
    };
    let checked: Result<bindings::JobPre<_>, _> = check_world(&engine, &linker, &component);
    if let Err(e) = checked {
        return match e {
            LoadError::World(message) => refuse(Why::World, message),
            other => refuse(Why::Invalid, other.to_string()),
        };
    }
    let artifact = match component.serialize() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wasmq compile-module: serializing: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(&artifact).and_then(|()| out.flush()) {
        eprintln!("wasmq compile-module: writing the artifact: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Caps this process's data segment and CPU time and lowers its priority, so that a compile
/// cannot take the machine from the server that started it.
#[allow(unsafe_code)]
fn limit_self(memory_bytes: u64, cpu_seconds: u64) -> std::io::Result<()> {
    let set = |resource, rlim_cur: u64, rlim_max: u64| {
        let rlimit = libc::rlimit { rlim_cur, rlim_max };
        // SAFETY: `setrlimit` reads the struct we pass and changes only this process's limits.
        if unsafe { libc::setrlimit(resource, &rlimit) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(libc::RLIMIT_DATA, memory_bytes, memory_bytes)?;
    // The soft limit sends SIGXCPU; one second later the hard limit kills.
    set(libc::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)?;
    // SAFETY: `setpriority` changes only this process's scheduling priority.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
