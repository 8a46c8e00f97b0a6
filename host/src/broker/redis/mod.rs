//! The Redis broker: jobs, leases and modules in one Redis shared by every worker.
//!
//! Every job state change is one Lua script (`lua/*.lua`, each prefixed by `lua/common.lua`), so a
//! crash between two commands can never leave a half-moved job. Every key is built by [`Keys`];
//! the keys of one queue share the hash tag `{queue}` so each script touches one Redis Cluster slot.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `wasmq:{q}:ready` | zset | ids by priority, then enqueue order |
//! | `wasmq:{q}:scheduled` | zset | ids by due time (delayed jobs, retry backoff) |
//! | `wasmq:{q}:leased` | zset | ids by lease deadline |
//! | `wasmq:{q}:dead` | zset | ids by time of death |
//! | `wasmq:{q}:job:<id>` | hash | `inv` (the invocation JSON), `state`, `attempts`, `max`, `prio`, `enq`, `lease` (token), `worker`, `started`, `fin`, `err`, `report`, `progress` (live), `cancel`, `waiters` |
//! | `wasmq:{q}:wake` | list | at most one token: a blocked worker's `BLPOP` wakes on it |
//! | `wasmq:{q}:done:<id>` | list | tokens for clients waiting on a job (`--wait`) |
//! | `wasmq:{q}:seq` | string | enqueue counter (FIFO within a priority) |
//! | `wasmq:{q}:stats` | hash | running totals: `enqueued`, `succeeded`, `failed`, `retried`, `dead`, `cancelled`, `recovered`; `paused` while paused; limits `limit_concurrency`, `limit_rate` per `limit_per_ms` and the current `rate_window`/`rate_count` |
//! | `wasmq:{q}:cron` | hash | cron entry name → entry JSON (schedule, invocation template) |
//! | `wasmq:{q}:cron_next` | hash | cron entry name → next tick (Unix ms) |
//! | `wasmq:{q}:batch:<id>` | hash | a batch: `total`, `pending`, `callback` (invocation JSON), `callback_id`, `created`, `done` |
//! | `wasmq:{q}:batch:<id>:jobs` | list | the batch's job ids |
//! | `wasmq:queues` | set | every queue name used |
//! | `wasmq:workers` | hash | worker name → its last report (host, pid, queues, concurrency, in flight, last seen) |
//! | `wasmq:{modules}:index` | hash | hex digest → `{size, uploaded_at_ms}` |
//! | `wasmq:{modules}:bytes:<hex>` | string | the component bytes |
//!
//! Commands go through one auto-reconnecting [`ConnectionManager`] (requests from concurrent tasks
//! are pipelined on it); blocking `BLPOP`s get their own connections. A command that fails because
//! the connection dropped or Redis is loading is retried: every script is safe to repeat (enqueue is
//! idempotent by id, acks and heartbeats check the lease token).

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, RedisError, RetryMethod, Script, ScriptInvocation};

use super::{
    Ack, AttemptError, BatchInfo, Broker, BrokerError, CancelOutcome, Completion, CronEntry,
    DEFAULT_RESULT_TTL, Enqueued, Heartbeat, JobPage, JobRecord, JobState, Lease, LeaseKey,
    Maintenance, ModuleDeletion, ModuleInfo, NewBatch, QueueCounts, QueueLimits, QueueTotals,
    RunReport, WORKER_TTL, WorkerInfo, now_ms,
};
use crate::invocation::{Invocation, InvocationError, NewJob};
use crate::modules::ModuleHash;
use crate::sandbox::Progress;

/// How long a command is retried while Redis is unreachable or loading before the error is
/// returned: long enough to ride out a Redis restart or failover, short enough that a worker
/// notices a dead Redis and says so.
const RETRY_WINDOW: Duration = Duration::from_secs(30);

/// Longest single `BLPOP`; longer waits are several of them. Connections used for blocking calls
/// time out a little after this, so a silently vanished server is noticed.
const MAX_BLOCK: Duration = Duration::from_secs(5);

/// Jobs per enqueue script call: bounds how long one call holds Redis.
const ENQUEUE_CHUNK: usize = 500;

/// Due jobs and expired leases handled per maintenance pass and queue.
const MAINTAIN_LIMIT: usize = 1000;

macro_rules! script {
    ($name:literal) => {
        Script::new(concat!(
            include_str!("lua/common.lua"),
            include_str!(concat!("lua/", $name, ".lua"))
        ))
    };
}

struct Scripts {
    enqueue: Script,
    fetch: Script,
    heartbeat: Script,
    ack: Script,
    release: Script,
    maintain: Script,
    watch: Script,
    dead: Script,
    run_now: Script,
    cancel: Script,
    cron_put: Script,
    cron_remove: Script,
    cron_fire: Script,
    progress: Script,
    pause: Script,
    limits: Script,
    batch_enqueue: Script,
    put_module: Script,
    delete_module: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: script!("enqueue"),
    fetch: script!("fetch"),
    heartbeat: script!("heartbeat"),
    ack: script!("ack"),
    release: script!("release"),
    maintain: script!("maintain"),
    watch: script!("watch"),
    dead: script!("dead"),
    run_now: script!("run_now"),
    cancel: script!("cancel"),
    cron_put: script!("cron_put"),
    cron_remove: script!("cron_remove"),
    cron_fire: script!("cron_fire"),
    progress: script!("progress"),
    pause: script!("pause"),
    limits: script!("limits"),
    batch_enqueue: script!("batch_enqueue"),
    put_module: Script::new(include_str!("lua/put_module.lua")),
    delete_module: Script::new(include_str!("lua/delete_module.lua")),
});

/// Every Redis key wasmq uses, built in one place.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

/// The keys of one queue, in the order job scripts take them.
#[derive(Clone, Debug)]
pub struct QueueKeys {
    /// `KEYS[1..=7]`: ready, scheduled, leased, dead, wake, seq, stats.
    pub keys: [String; 7],
    /// Prefix of job hashes: `wasmq:{q}:job:`.
    pub job_prefix: String,
    /// Prefix of waiter lists: `wasmq:{q}:done:`.
    pub done_prefix: String,
    /// Cron entries (`KEYS[8]` of the cron scripts) and their next ticks (`KEYS[9]`).
    pub cron: [String; 2],
    /// Indexes of recently succeeded and cancelled jobs (zsets: finished at ms → id), kept by the
    /// scripts that end jobs (`list_final` in `lua/common.lua`).
    pub finished: [String; 2],
}

impl QueueKeys {
    /// The sorted set listing jobs in `state`, and whether it lists newest first.
    pub fn listing(&self, state: JobState) -> (&str, bool) {
        match state {
            JobState::Ready => (&self.keys[0], false),
            JobState::Scheduled => (&self.keys[1], false),
            JobState::Leased => (&self.keys[2], false),
            JobState::Dead => (&self.keys[3], true),
            JobState::Succeeded => (&self.finished[0], true),
            JobState::Cancelled => (&self.finished[1], true),
        }
    }
}

impl Keys {
    /// Keys under `prefix` (normally `wasmq`).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The keys of `queue`.
    pub fn queue(&self, queue: &str) -> QueueKeys {
        let base = format!("{}:{{{queue}}}:", self.prefix);
        QueueKeys {
            keys: [
                "ready",
                "scheduled",
                "leased",
                "dead",
                "wake",
                "seq",
                "stats",
            ]
            .map(|k| format!("{base}{k}")),
            job_prefix: format!("{base}job:"),
            done_prefix: format!("{base}done:"),
            cron: [format!("{base}cron"), format!("{base}cron_next")],
            finished: [format!("{base}succeeded"), format!("{base}cancelled")],
        }
    }

    /// The job hash of `id` in `queue`.
    pub fn job(&self, queue: &str, id: &str) -> String {
        format!("{}:{{{queue}}}:job:{id}", self.prefix)
    }

    /// The waiter list of `id` in `queue`.
    pub fn done(&self, queue: &str, id: &str) -> String {
        format!("{}:{{{queue}}}:done:{id}", self.prefix)
    }

    /// The worker registry: name → `WorkerInfo` JSON.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// The set of queue names.
    pub fn queues(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// The module index.
    pub fn module_index(&self) -> String {
        format!("{}:{{modules}}:index", self.prefix)
    }

    /// The bytes of a module.
    pub fn module_bytes(&self, hash: ModuleHash) -> String {
        format!("{}:{{modules}}:bytes:{}", self.prefix, hash.hex())
    }
}

/// The Redis broker.
pub struct RedisBroker {
    client: redis::Client,
    conn: ConnectionManager,
    /// Idle connections for blocking commands.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    keys: Keys,
    result_ttl: Duration,
    /// Queues this process already added to `wasmq:queues`.
    registered: Mutex<HashSet<String>>,
}

impl RedisBroker {
    /// Connects to `url` (`redis://host:port/db`), with keys under `wasmq`.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with_prefix(url, "wasmq").await
    }

    /// Connects to `url` with keys under `prefix`.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, BrokerError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            // Scripts over a few hundred jobs take milliseconds; a second is a struggling server.
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(RedisBroker {
            client,
            conn,
            blocking: Mutex::new(Vec::new()),
            keys: Keys::new(prefix),
            result_ttl: DEFAULT_RESULT_TTL,
            registered: Mutex::new(HashSet::new()),
        })
    }

    /// Keeps succeeded and cancelled jobs' records for `ttl` (default a day).
    pub fn with_result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    fn ttl_secs(&self) -> u64 {
        self.result_ttl.as_secs().max(1)
    }

    /// The key builder.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs a command or script, retrying while the failure is a dropped connection or a server
    /// that is loading.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, BrokerError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let start = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            match call(self.conn.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && start.elapsed() < RETRY_WINDOW => {
                    tracing::debug!(error = %e, "redis call failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs one command, retrying like [`Self::retrying`].
    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, BrokerError> {
        self.retrying(|mut c| {
            let cmd = cmd.clone();
            async move { cmd.query_async(&mut c).await }
        })
        .await
    }

    /// Runs a pipeline, retrying like [`Self::retrying`].
    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BrokerError> {
        self.retrying(|mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async(&mut c).await }
        })
        .await
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, BrokerError> {
        self.retrying(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
    }

    fn queue_script<'s>(&self, script: &'s Script, queue: &str) -> ScriptInvocation<'s> {
        let qk = self.keys.queue(queue);
        let mut inv = script.prepare_invoke();
        for k in &qk.keys {
            inv.key(k);
        }
        inv.arg(qk.job_prefix).arg(qk.done_prefix);
        inv
    }

    /// A cron script: the queue's seven keys, then its cron entry and next-tick hashes.
    fn cron_script<'s>(&self, script: &'s Script, queue: &str) -> ScriptInvocation<'s> {
        let mut inv = self.queue_script(script, queue);
        for k in self.keys.queue(queue).cron {
            inv.key(k);
        }
        inv
    }

    /// Runs a blocking command on a dedicated connection.
    async fn blocking<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, BrokerError> {
        let pooled = self.blocking.lock().expect("not poisoned").pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(MAX_BLOCK + Duration::from_secs(5)));
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?
            }
        };
        let result = cmd.query_async(&mut conn).await;
        // A connection that failed is dropped; the next call opens a fresh one.
        if result.is_ok() {
            self.blocking.lock().expect("not poisoned").push(conn);
        }
        Ok(result?)
    }

    async fn register_queues<'a>(
        &self,
        queues: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), BrokerError> {
        let new: Vec<String> = {
            let known = self.registered.lock().expect("not poisoned");
            queues
                .into_iter()
                .filter(|q| !known.contains(*q))
                .map(str::to_owned)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let key = self.keys.queues();
        self.query::<()>(redis::cmd("SADD").arg(&key).arg(&new).clone())
            .await?;
        self.registered.lock().expect("not poisoned").extend(new);
        Ok(())
    }

    async fn queue_names(&self) -> Result<Vec<String>, BrokerError> {
        let key = self.keys.queues();
        let mut names: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(&key).clone()).await?;
        names.sort();
        Ok(names)
    }

    async fn records(
        &self,
        queue: &str,
        ids: &[String],
    ) -> Result<Vec<Option<JobRecord>>, BrokerError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(self.keys.job(queue, id));
        }
        let maps: Vec<HashMap<String, String>> = self.pipeline(&pipe).await?;
        ids.iter()
            .zip(maps)
            .map(|(id, map)| parse_record(queue, id, map))
            .collect()
    }
}

/// Whether a failed call may succeed if repeated (connection dropped, server loading or failing
/// over).
fn transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect
                | RetryMethod::ReconnectFromInitialConnections
                | RetryMethod::WaitAndRetry
                | RetryMethod::RetryImmediately
        )
}

fn corrupt(what: &str, reason: impl ToString) -> BrokerError {
    BrokerError::Corrupt {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

fn parse_record(
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
    }))
}

fn json_or_empty<T: serde::Serialize>(v: Option<&T>) -> String {
    v.map(|v| serde_json::to_string(v).expect("plain data serialises"))
        .unwrap_or_default()
}

#[async_trait]
impl Broker for RedisBroker {
    async fn ping(&self) -> Result<(), BrokerError> {
        // One attempt, no retries: a health check reports the present, not the next 30 s.
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn put_module(&self, hash: ModuleHash, bytes: &[u8]) -> Result<ModuleInfo, BrokerError> {
        let mut inv = SCRIPTS.put_module.prepare_invoke();
        inv.key(self.keys.module_index())
            .key(self.keys.module_bytes(hash))
            .arg(hash.hex())
            .arg(bytes);
        let info: String = self.script(&inv).await?;
        parse_module_info(&hash.hex(), &info)
    }

    async fn module(&self, hash: ModuleHash) -> Result<Option<Vec<u8>>, BrokerError> {
        let key = self.keys.module_bytes(hash);
        self.query(redis::cmd("GET").arg(&key).clone()).await
    }

    async fn has_module(&self, hash: ModuleHash) -> Result<bool, BrokerError> {
        let key = self.keys.module_index();
        self.query(redis::cmd("HEXISTS").arg(&key).arg(hash.hex()).clone())
            .await
    }

    async fn modules(&self) -> Result<Vec<ModuleInfo>, BrokerError> {
        let key = self.keys.module_index();
        let map: HashMap<String, String> =
            self.query(redis::cmd("HGETALL").arg(&key).clone()).await?;
        let mut all = map
            .iter()
            .map(|(hex, info)| parse_module_info(hex, info))
            .collect::<Result<Vec<_>, _>>()?;
        all.sort_by_key(|m| m.uploaded_at_ms);
        Ok(all)
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, BrokerError> {
        self.register_queues(jobs.iter().map(NewJob::queue)).await?;
        // Group by queue (one slot per script call), keeping each job's position.
        let mut by_queue: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            by_queue.entry(job.queue()).or_default().push(i);
        }
        let mut calls = Vec::new();
        for (queue, positions) in &by_queue {
            for chunk in positions.chunks(ENQUEUE_CHUNK) {
                let mut inv = self.queue_script(&SCRIPTS.enqueue, queue);
                inv.arg(chunk.len());
                for &i in chunk {
                    let job = &jobs[i];
                    let inv_json =
                        serde_json::to_string(&job.invocation).expect("plain data serialises");
                    inv.arg(job.id())
                        .arg(inv_json)
                        .arg(job.invocation.priority)
                        .arg(job.invocation.max_attempts)
                        .arg(job.run_at_ms.unwrap_or(0));
                }
                calls.push((chunk, inv));
            }
        }
        // Chunks go out together: the connection pipelines them.
        let replies = futures_util::future::join_all(
            calls.iter().map(|(_, inv)| self.script::<Vec<u8>>(inv)),
        )
        .await;
        let mut out = vec![Enqueued::Existed; jobs.len()];
        for ((chunk, _), reply) in calls.iter().zip(replies) {
            for (&i, created) in chunk.iter().zip(reply?) {
                out[i] = if created == 1 {
                    Enqueued::Created
                } else {
                    Enqueued::Existed
                };
            }
        }
        Ok(out)
    }

    async fn enqueue_batch(&self, batch: &NewBatch) -> Result<Enqueued, BrokerError> {
        let queue = batch.callback.queue();
        self.register_queues([queue]).await?;
        let cb = &batch.callback;
        let mut inv = self.queue_script(&SCRIPTS.batch_enqueue, queue);
        inv.arg(&batch.id)
            .arg(cb.id())
            .arg(serde_json::to_string(&cb.invocation).expect("plain data serialises"))
            .arg(cb.invocation.priority)
            .arg(cb.invocation.max_attempts)
            .arg(batch.jobs.len());
        for job in &batch.jobs {
            inv.arg(job.id())
                .arg(serde_json::to_string(&job.invocation).expect("plain data serialises"))
                .arg(job.invocation.priority)
                .arg(job.invocation.max_attempts)
                .arg(job.run_at_ms.unwrap_or(0));
        }
        let created: u32 = match self.script(&inv).await {
            Ok(n) => n,
            // The script's refusal (a job id is taken) is the caller's mistake, not Redis's.
            Err(BrokerError::Redis(e)) if e.to_string().contains("cannot join batch") => {
                let text = e.to_string();
                let reason = text
                    .split_once("job `")
                    .map_or(text.clone(), |(_, rest)| format!("job `{rest}"));
                return Err(BrokerError::Invocation(InvocationError::Field {
                    field: "jobs",
                    reason,
                }));
            }
            Err(e) => return Err(e),
        };
        Ok(if created == 1 {
            Enqueued::Created
        } else {
            Enqueued::Existed
        })
    }

    async fn batch(&self, queue: &str, id: &str) -> Result<Option<BatchInfo>, BrokerError> {
        let key = format!(
            "{}batch:{id}",
            &self.keys.queue(queue).job_prefix.trim_end_matches("job:")
        );
        let map: HashMap<String, String> =
            self.query(redis::cmd("HGETALL").arg(&key).clone()).await?;
        if map.is_empty() {
            return Ok(None);
        }
        let num = |f: &str| map.get(f).and_then(|v| v.parse::<u64>().ok());
        Ok(Some(BatchInfo {
            id: id.to_owned(),
            queue: queue.to_owned(),
            total: num("total").unwrap_or(0),
            pending: num("pending").unwrap_or(0),
            callback_id: map.get("callback_id").cloned().unwrap_or_default(),
            created_at_ms: num("created").unwrap_or(0),
            done_at_ms: num("done"),
        }))
    }

    async fn fetch(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        worker: &str,
    ) -> Result<Vec<Lease>, BrokerError> {
        let mut out = Vec::new();
        for queue in queues {
            if out.len() >= max {
                break;
            }
            let mut inv = self.queue_script(&SCRIPTS.fetch, queue);
            inv.arg(max - out.len())
                .arg(lease.as_millis() as u64)
                .arg(worker);
            let rows: Vec<(String, String, u32, u64)> = self.script(&inv).await?;
            let mut refused = Vec::new();
            for (id, inv_json, attempt, token) in rows {
                let key = LeaseKey {
                    queue: queue.clone(),
                    id,
                    token,
                };
                match Invocation::from_json(inv_json.as_bytes()) {
                    Ok(invocation) => out.push(Lease {
                        key,
                        attempt,
                        invocation,
                    }),
                    // Written straight into Redis by something that skipped the checks: the job
                    // ends dead with the reason instead of stalling every worker that fetches it.
                    Err(e) => refused.push(Ack {
                        lease: key,
                        completion: Completion::Dead {
                            error: AttemptError {
                                attempt,
                                kind: "invocation".to_owned(),
                                message: e.to_string(),
                                at_ms: now_ms(),
                            },
                            report: None,
                        },
                    }),
                }
            }
            if !refused.is_empty() {
                tracing::warn!(queue = %queue, count = refused.len(), "invalid invocations moved to the dead set");
                self.complete(&refused).await?;
            }
        }
        Ok(out)
    }

    async fn wait_for_work(&self, queues: &[String], timeout: Duration) -> Result<(), BrokerError> {
        // One BLPOP over every queue's wake key. (On Redis Cluster these would be one BLPOP per
        // queue: the keys live in different slots.)
        let mut cmd = redis::cmd("BLPOP");
        for q in queues {
            cmd.arg(&self.keys.queue(q).keys[4]);
        }
        cmd.arg(timeout.min(MAX_BLOCK).as_secs_f64().max(0.001));
        let _: Option<(String, String)> = self.blocking(cmd).await?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        leases: &[LeaseKey],
        lease: Duration,
    ) -> Result<Heartbeat, BrokerError> {
        let mut beat = Heartbeat::default();
        for (queue, group) in group_by_queue(leases) {
            let mut inv = self.queue_script(&SCRIPTS.heartbeat, queue);
            inv.arg(lease.as_millis() as u64);
            for key in &group {
                inv.arg(&key.id).arg(key.token);
            }
            let (gone, cancel): (Vec<String>, Vec<String>) = self.script(&inv).await?;
            let gone: HashSet<String> = gone.into_iter().collect();
            let cancel: HashSet<String> = cancel.into_iter().collect();
            for key in group {
                if gone.contains(&key.id) {
                    beat.lost.push(key.clone());
                } else if cancel.contains(&key.id) {
                    beat.cancel.push(key.clone());
                }
            }
        }
        Ok(beat)
    }

    async fn complete(&self, acks: &[Ack]) -> Result<usize, BrokerError> {
        let mut by_queue: HashMap<&str, Vec<&Ack>> = HashMap::new();
        for ack in acks {
            by_queue.entry(&ack.lease.queue).or_default().push(ack);
        }
        let mut stale = 0;
        for (queue, group) in by_queue {
            let mut inv = self.queue_script(&SCRIPTS.ack, queue);
            inv.arg(self.ttl_secs());
            for ack in group {
                let (action, delay, error, report) = match &ack.completion {
                    Completion::Succeeded(report) => ("ok", 0, None, Some(report)),
                    Completion::Retry {
                        delay,
                        error,
                        report,
                    } => (
                        "retry",
                        delay.as_millis() as u64,
                        Some(error),
                        report.as_ref(),
                    ),
                    Completion::Dead { error, report } => ("dead", 0, Some(error), report.as_ref()),
                    Completion::Cancelled { error } => ("cancelled", 0, Some(error), None),
                };
                inv.arg(&ack.lease.id)
                    .arg(ack.lease.token)
                    .arg(action)
                    .arg(delay)
                    .arg(json_or_empty(error))
                    .arg(json_or_empty(report));
            }
            let n: usize = self.script(&inv).await?;
            stale += n;
        }
        Ok(stale)
    }

    async fn report_progress(&self, updates: &[(LeaseKey, Progress)]) -> Result<(), BrokerError> {
        let mut by_queue: HashMap<&str, Vec<&(LeaseKey, Progress)>> = HashMap::new();
        for u in updates {
            by_queue.entry(&u.0.queue).or_default().push(u);
        }
        for (queue, group) in by_queue {
            let mut inv = self.queue_script(&SCRIPTS.progress, queue);
            for (key, progress) in group {
                inv.arg(&key.id)
                    .arg(key.token)
                    .arg(serde_json::to_string(progress).expect("plain data serialises"));
            }
            let _: u32 = self.script(&inv).await?;
        }
        Ok(())
    }

    async fn release(&self, leases: &[LeaseKey]) -> Result<(), BrokerError> {
        for (queue, group) in group_by_queue(leases) {
            let mut inv = self.queue_script(&SCRIPTS.release, queue);
            for key in group {
                inv.arg(&key.id).arg(key.token);
            }
            let _: usize = self.script(&inv).await?;
        }
        Ok(())
    }

    async fn maintain(&self, queue: &str) -> Result<Maintenance, BrokerError> {
        let mut inv = self.queue_script(&SCRIPTS.maintain, queue);
        inv.arg(MAINTAIN_LIMIT).arg(self.ttl_secs());
        let (promoted, recovered, expired_dead): (u64, u64, u64) = self.script(&inv).await?;
        Ok(Maintenance {
            promoted,
            recovered,
            expired_dead,
        })
    }

    async fn job(&self, queue: Option<&str>, id: &str) -> Result<Option<JobRecord>, BrokerError> {
        let queues = match queue {
            Some(q) => vec![q.to_owned()],
            None => self.queue_names().await?,
        };
        for q in queues {
            if let Some(record) = self.records(&q, &[id.to_owned()]).await?.pop().flatten() {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    async fn wait_job(
        &self,
        queue: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<JobRecord>, BrokerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut inv = self.queue_script(&SCRIPTS.watch, queue);
        inv.arg(id);
        let state: Option<String> = self.script(&inv).await?;
        let already_final = state
            .as_deref()
            .and_then(JobState::parse)
            .is_none_or(JobState::is_final);
        if !already_final {
            let done = self.keys.done(queue, id);
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let mut cmd = redis::cmd("BLPOP");
                cmd.arg(&done)
                    .arg(left.min(MAX_BLOCK).as_secs_f64().max(0.001));
                let popped: Option<(String, String)> = self.blocking(cmd).await?;
                if popped.is_some() {
                    break;
                }
                // A token can be missed across a reconnect; the record is the truth.
                let record = self.job(Some(queue), id).await?;
                if record.as_ref().is_none_or(|r| r.state.is_final()) {
                    return Ok(record);
                }
            }
        }
        self.job(Some(queue), id).await
    }

    async fn queues(&self) -> Result<Vec<QueueCounts>, BrokerError> {
        let names = self.queue_names().await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for q in &names {
            let qk = self.keys.queue(q);
            for key in &qk.keys[..4] {
                pipe.cmd("ZCARD").arg(key);
            }
        }
        let counts: Vec<u64> = self.pipeline(&pipe).await?;
        let mut pipe = redis::pipe();
        for q in &names {
            pipe.cmd("HGETALL").arg(&self.keys.queue(q).keys[6]);
        }
        let stats: Vec<HashMap<String, u64>> = self.pipeline(&pipe).await?;
        // The head of each ready set, and when it was enqueued.
        let mut pipe = redis::pipe();
        for q in &names {
            pipe.cmd("ZRANGE")
                .arg(&self.keys.queue(q).keys[0])
                .arg(0)
                .arg(0);
        }
        let heads: Vec<Vec<String>> = self.pipeline(&pipe).await?;
        let mut pipe = redis::pipe();
        for (q, head) in names.iter().zip(&heads) {
            match head.first() {
                Some(id) => pipe.cmd("HGET").arg(self.keys.job(q, id)).arg("enq"),
                None => pipe.cmd("ECHO").arg(""),
            };
        }
        let enqueued: Vec<Option<String>> = self.pipeline(&pipe).await?;
        Ok(names
            .into_iter()
            .zip(counts.chunks(4))
            .zip(stats)
            .zip(enqueued)
            .map(|(((queue, c), t), enq)| {
                let get = |f: &str| t.get(f).copied().unwrap_or(0);
                QueueCounts {
                    oldest_ready_ms: enq.and_then(|e| e.parse().ok()),
                    queue,
                    ready: c[0],
                    scheduled: c[1],
                    leased: c[2],
                    dead: c[3],
                    paused: get("paused") == 1,
                    limits: QueueLimits {
                        concurrency: t.get("limit_concurrency").map(|&c| c as u32),
                        rate: t
                            .get("limit_rate")
                            .map(|&r| (r as u32, get("limit_per_ms"))),
                    },
                    totals: QueueTotals {
                        enqueued: get("enqueued"),
                        succeeded: get("succeeded"),
                        failed: get("failed"),
                        retried: get("retried"),
                        dead: get("dead"),
                        cancelled: get("cancelled"),
                        recovered: get("recovered"),
                    },
                }
            })
            .collect())
    }

    async fn jobs(
        &self,
        queue: &str,
        state: JobState,
        offset: usize,
        limit: usize,
    ) -> Result<JobPage, BrokerError> {
        let qk = self.keys.queue(queue);
        let (key, newest_first) = qk.listing(state);
        if limit == 0 {
            let total = self.query(redis::cmd("ZCARD").arg(key).clone()).await?;
            return Ok(JobPage {
                total,
                jobs: Vec::new(),
            });
        }
        let mut pipe = redis::pipe();
        pipe.cmd("ZCARD")
            .arg(key)
            .cmd(if newest_first { "ZREVRANGE" } else { "ZRANGE" })
            .arg(key)
            .arg(offset)
            .arg(offset + limit - 1);
        let (total, ids): (u64, Vec<String>) = self.pipeline(&pipe).await?;
        // A listed job can be gone (its result expired) or have moved on since: skip those.
        let jobs = self
            .records(queue, &ids)
            .await?
            .into_iter()
            .flatten()
            .filter(|r| r.state == state)
            .collect();
        Ok(JobPage { total, jobs })
    }

    async fn retry_dead(&self, queue: &str, id: &str) -> Result<bool, BrokerError> {
        Ok(self.take_dead(queue, "retry", Some(id)).await? == 1)
    }

    async fn delete_dead(&self, queue: &str, id: &str) -> Result<bool, BrokerError> {
        Ok(self.take_dead(queue, "delete", Some(id)).await? == 1)
    }

    async fn retry_all_dead(&self, queue: &str) -> Result<u64, BrokerError> {
        self.take_dead(queue, "retry", None).await
    }

    async fn delete_all_dead(&self, queue: &str) -> Result<u64, BrokerError> {
        self.take_dead(queue, "delete", None).await
    }

    async fn run_now(&self, queue: &str, id: &str) -> Result<bool, BrokerError> {
        let mut inv = self.queue_script(&SCRIPTS.run_now, queue);
        inv.arg(id);
        let n: u32 = self.script(&inv).await?;
        Ok(n == 1)
    }

    async fn worker_seen(&self, info: &WorkerInfo) -> Result<(), BrokerError> {
        // Not job state: one idempotent HSET, no script needed.
        let key = self.keys.workers();
        let json = serde_json::to_string(info).expect("plain data serialises");
        self.query(
            redis::cmd("HSET")
                .arg(&key)
                .arg(&info.name)
                .arg(&json)
                .clone(),
        )
        .await
    }

    async fn worker_gone(&self, name: &str) -> Result<(), BrokerError> {
        let key = self.keys.workers();
        self.query(redis::cmd("HDEL").arg(&key).arg(name).clone())
            .await
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        let key = self.keys.workers();
        let all: HashMap<String, String> =
            self.query(redis::cmd("HGETALL").arg(&key).clone()).await?;
        let cutoff = now_ms().saturating_sub(WORKER_TTL.as_millis() as u64);
        let mut alive = Vec::new();
        for (name, json) in all {
            match serde_json::from_str::<WorkerInfo>(&json) {
                Ok(w) if w.last_seen_ms >= cutoff => alive.push(w),
                // Gone (or unreadable): dropped, so the list does not grow forever.
                _ => self.worker_gone(&name).await?,
            }
        }
        alive.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(alive)
    }

    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<(), BrokerError> {
        self.register_queues([queue]).await?;
        let (rate, per_ms) = limits.rate.unwrap_or((0, 0));
        let mut inv = self.queue_script(&SCRIPTS.limits, queue);
        inv.arg(limits.concurrency.unwrap_or(0))
            .arg(rate)
            .arg(per_ms);
        let _: u32 = self.script(&inv).await?;
        Ok(())
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), BrokerError> {
        self.register_queues([queue]).await?;
        let mut inv = self.queue_script(&SCRIPTS.pause, queue);
        inv.arg(if paused { "1" } else { "0" });
        let _: u32 = self.script(&inv).await?;
        Ok(())
    }

    async fn cancel(&self, queue: &str, id: &str) -> Result<CancelOutcome, BrokerError> {
        let mut inv = self.queue_script(&SCRIPTS.cancel, queue);
        inv.arg(id).arg(self.ttl_secs());
        let outcome: String = self.script(&inv).await?;
        Ok(match outcome.as_str() {
            "cancelled" => CancelOutcome::Cancelled,
            "cancelling" => CancelOutcome::Cancelling,
            "missing" => CancelOutcome::NotFound,
            other => CancelOutcome::AlreadyFinal(
                other
                    .strip_prefix("final:")
                    .and_then(JobState::parse)
                    .ok_or_else(|| corrupt(id, format!("cancel outcome `{other}`")))?,
            ),
        })
    }

    async fn put_cron(&self, entry: &CronEntry) -> Result<(), BrokerError> {
        let queue = &entry.invocation.queue;
        self.register_queues([queue.as_str()]).await?;
        let mut inv = self.cron_script(&SCRIPTS.cron_put, queue);
        inv.arg(&entry.name)
            .arg(serde_json::to_string(entry).expect("plain data serialises"))
            .arg(entry.next_ms);
        let _: u32 = self.script(&inv).await?;
        Ok(())
    }

    async fn crons(&self, queue: Option<&str>) -> Result<Vec<CronEntry>, BrokerError> {
        let queues = match queue {
            Some(q) => vec![q.to_owned()],
            None => self.queue_names().await?,
        };
        let mut all = Vec::new();
        for q in queues {
            let [entries_key, next_key] = self.keys.queue(&q).cron;
            let mut pipe = redis::pipe();
            pipe.cmd("HGETALL")
                .arg(&entries_key)
                .cmd("HGETALL")
                .arg(&next_key);
            let (entries, next): (HashMap<String, String>, HashMap<String, u64>) =
                self.pipeline(&pipe).await?;
            for (name, json) in entries {
                let mut entry: CronEntry = serde_json::from_str(&json)
                    .map_err(|e| corrupt(&format!("cron {q}/{name}"), e))?;
                entry.next_ms = next.get(&name).copied().unwrap_or(0);
                all.push(entry);
            }
        }
        all.sort_by(|a, b| (&a.invocation.queue, &a.name).cmp(&(&b.invocation.queue, &b.name)));
        Ok(all)
    }

    async fn remove_cron(&self, queue: &str, name: &str) -> Result<bool, BrokerError> {
        let mut inv = self.cron_script(&SCRIPTS.cron_remove, queue);
        inv.arg(name);
        let n: u32 = self.script(&inv).await?;
        Ok(n == 1)
    }

    async fn fire_cron(
        &self,
        queue: &str,
        name: &str,
        tick_ms: u64,
        next_ms: u64,
        job: &NewJob,
    ) -> Result<bool, BrokerError> {
        let mut inv = self.cron_script(&SCRIPTS.cron_fire, queue);
        inv.arg(name)
            .arg(tick_ms)
            .arg(next_ms)
            .arg(job.id())
            .arg(serde_json::to_string(&job.invocation).expect("plain data serialises"))
            .arg(job.invocation.priority)
            .arg(job.invocation.max_attempts);
        let fired: u32 = self.script(&inv).await?;
        Ok(fired == 1)
    }

    async fn module_usage(&self) -> Result<HashMap<ModuleHash, u64>, BrokerError> {
        const PAGE: isize = 1000;
        let mut usage = HashMap::new();
        for queue in self.queue_names().await? {
            let qk = self.keys.queue(&queue);
            for index in &qk.keys[..4] {
                let mut start = 0;
                loop {
                    let ids: Vec<String> = self
                        .query(
                            redis::cmd("ZRANGE")
                                .arg(index)
                                .arg(start)
                                .arg(start + PAGE - 1)
                                .clone(),
                        )
                        .await?;
                    if ids.is_empty() {
                        break;
                    }
                    let mut pipe = redis::pipe();
                    for id in &ids {
                        pipe.cmd("HGET").arg(self.keys.job(&queue, id)).arg("inv");
                    }
                    let invs: Vec<Option<String>> = self.pipeline(&pipe).await?;
                    for inv in invs.iter().flatten() {
                        if let Ok(inv) = Invocation::from_json(inv.as_bytes()) {
                            *usage.entry(inv.module).or_default() += 1;
                        }
                    }
                    start += PAGE;
                }
            }
        }
        Ok(usage)
    }

    async fn delete_module(
        &self,
        hash: ModuleHash,
        force: bool,
    ) -> Result<ModuleDeletion, BrokerError> {
        if !self.has_module(hash).await? {
            return Ok(ModuleDeletion::NotFound);
        }
        if !force {
            let users = self.module_usage().await?.get(&hash).copied().unwrap_or(0);
            if users > 0 {
                return Ok(ModuleDeletion::InUse(users));
            }
        }
        let mut inv = SCRIPTS.delete_module.prepare_invoke();
        inv.key(self.keys.module_index())
            .key(self.keys.module_bytes(hash))
            .arg(hash.hex());
        let n: u32 = self.script(&inv).await?;
        Ok(if n == 1 {
            ModuleDeletion::Deleted
        } else {
            ModuleDeletion::NotFound
        })
    }
}

impl RedisBroker {
    /// Takes one named job (`Some(id)`), or every job that was dead when the call began, out of
    /// the dead set (`action`: `retry` or `delete`), a thousand per script so that Redis never
    /// stalls on a large dead set.
    async fn take_dead(
        &self,
        queue: &str,
        action: &str,
        id: Option<&str>,
    ) -> Result<u64, BrokerError> {
        const CHUNK: u64 = 1000;
        if let Some(id) = id {
            let mut inv = self.queue_script(&SCRIPTS.dead, queue);
            inv.arg(action).arg(0).arg(id);
            return self.script(&inv).await;
        }
        // Redis's clock, like the scores the scripts write.
        let (secs, micros): (u64, u64) = self.query(redis::cmd("TIME")).await?;
        let cutoff = secs * 1000 + micros / 1000;
        let mut total = 0;
        loop {
            let mut inv = self.queue_script(&SCRIPTS.dead, queue);
            inv.arg(action).arg(CHUNK).arg(cutoff);
            let n: u64 = self.script(&inv).await?;
            total += n;
            if n < CHUNK {
                return Ok(total);
            }
        }
    }
}

fn parse_module_info(hex: &str, info: &str) -> Result<ModuleInfo, BrokerError> {
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

fn group_by_queue(leases: &[LeaseKey]) -> Vec<(&str, Vec<&LeaseKey>)> {
    let mut groups: Vec<(&str, Vec<&LeaseKey>)> = Vec::new();
    for key in leases {
        match groups.iter_mut().find(|(q, _)| *q == key.queue) {
            Some((_, g)) => g.push(key),
            None => groups.push((&key.queue, vec![key])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    /// `docs/redis-enqueue.lua` is what direct writers load: it must be exactly the script the
    /// broker runs. Regenerate with `cat lua/common.lua lua/enqueue.lua > docs/redis-enqueue.lua`.
    #[test]
    fn the_published_enqueue_script_is_the_one_in_use() {
        assert_eq!(
            include_str!("../../../../docs/redis-enqueue.lua"),
            concat!(
                include_str!("lua/common.lua"),
                include_str!("lua/enqueue.lua")
            )
        );
    }
}
