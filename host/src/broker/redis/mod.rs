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
//! | `wasmq:{q}:batch_ends` | hash | batch id → its jobs that ended and are not yet settled into its `pending` |
//! | `wasmq:{q}:batches_due` | set | batches with none pending whose callback is not yet enqueued |
//! | `wasmq:{q}:succeeded`, `…:cancelled` | zset | recently succeeded and cancelled ids by when |
//! | `wasmq:queues` | set | every queue name used |
//! | `wasmq:workers` | hash | worker name → its last report (host, pid, queues, concurrency, in flight, last seen) |
//! | `wasmq:{modules}:index` | hash | hex digest → `{size, uploaded_at_ms}` |
//! | `wasmq:{module:<hex>}:bytes` | string | the component bytes, under their own hash tag so that modules spread over a cluster's masters |
//!
//! Commands go through one auto-reconnecting [`ConnectionManager`] (requests from concurrent tasks
//! are pipelined on it), or a cluster connection; blocking `BLPOP`s and durable writes get
//! connections of their own (`conn.rs`). A command that fails because the connection dropped or
//! Redis is loading is retried: every script is safe to repeat (enqueue is idempotent by id, acks
//! and heartbeats check the lease token).

mod admin;
mod batches;
mod conn;
mod cron;
mod egress;
mod enqueue;
mod grants;
mod inspect;
mod keys;
mod lifecycle;
mod lineage;
mod modules;
mod records;
mod registry;
mod scripts;
mod secrets;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{RedisError, Value};

use crate::broker::{BrokerError, DEFAULT_RESULT_TTL, JobRecord, LeaseKey};
use conn::{
    Blocking, CONNECT_TIMEOUT, Conn, DurableConns, RESPONSE_TIMEOUT, Source, refuse_cluster_node,
};
pub use conn::{DURABLE_WRITES_TIMEOUT, DurableWrites};
pub use keys::{Keys, QueueKeys, hash_slot};
use records::parse_record;
use scripts::{Call, Lua, SCRIPTS};

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

/// The Redis broker. Cloning it is cheap: the clones share its connections.
#[derive(Clone)]
pub struct RedisBroker {
    /// Set: writes wait for replicas.
    durable: Option<DurableWrites>,
    /// Where durable writes run.
    durable_conns: Arc<DurableConns>,
    conn: Conn,
    /// Whether `conn` is a Redis Cluster connection (every multi-key command must then stay in
    /// one slot).
    cluster: bool,
    /// Connections for blocking commands.
    blocking: Arc<Blocking>,
    keys: Keys,
    result_ttl: Duration,
    /// Queues this process already added to `wasmq:queues`.
    registered: Arc<Mutex<HashSet<String>>>,
    /// Small enqueues waiting to go out together (`enqueue.rs`).
    combiner: Arc<Mutex<enqueue::Combiner>>,
    /// How long a module upload or deletion may stay under way before maintenance takes it for
    /// one whose process died (`modules.rs`).
    module_op_age: Duration,
    /// How long an upload or deletion waits for another of the same module (`modules.rs`).
    module_op_wait: Duration,
    /// When this process last looked for module operations that never ended.
    last_module_sweep: Arc<Mutex<Option<std::time::Instant>>>,
    /// Modules this process saw listed, and when (`modules.rs`): an enqueue's check answered
    /// without a round trip.
    modules_seen: Arc<Mutex<modules::Seen>>,
    /// Per queue, the head of its ready set as the last fetch left it (the next fetch's
    /// candidates, so a busy worker's fetch is one round trip instead of a read and a script),
    /// and how many candidates past what it wants a fetch declares there.
    next_candidates: Arc<Mutex<HashMap<String, lifecycle::FetchHint>>>,
}

impl RedisBroker {
    /// Connects to `url`, with keys under `wasmq`: one Redis (`redis://host:port/db`), or a
    /// Redis Cluster given as a comma-separated list of node URLs
    /// (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`; the rest of the cluster is discovered).
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with_prefix(url, "wasmq").await
    }

    /// Connects to `url` (see [`Self::connect`]) with keys under `prefix`.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, BrokerError> {
        Self::connect_with(url, prefix, None).await
    }

    /// Connects to `url` (see [`Self::connect`]) with keys under `prefix`; a `rediss://` URL is
    /// verified against `root_ca` (PEM certificates) when given, else against the system's
    /// trusted roots.
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        root_ca: Option<&[u8]>,
    ) -> Result<Self, BrokerError> {
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: root_ca.map(<[u8]>::to_vec),
        };
        let nodes: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let (source, conn, cluster) = match nodes.as_slice() {
            [] => {
                return Err(BrokerError::Unavailable {
                    backend: "redis",
                    reason: "no Redis URL given".into(),
                });
            }
            [one] => {
                let client = match root_ca {
                    Some(_) => redis::Client::build_with_tls(*one, certs())?,
                    None => redis::Client::open(*one)?,
                };
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_max_delay(Duration::from_secs(1));
                let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
                refuse_cluster_node(&mut Conn::Managed(conn.clone()), one).await?;
                (Source::Single(Box::new(client)), Conn::Managed(conn), false)
            }
            several => {
                let builder = || {
                    let builder = ClusterClientBuilder::new(several.iter().copied());
                    match root_ca {
                        Some(_) => builder.certs(certs()),
                        None => builder,
                    }
                    .connection_timeout(CONNECT_TIMEOUT)
                    // MOVED, ASK and TRYAGAIN while a slot migrates or a master fails over
                    // are followed within the overall timeout; past it [`Self::retrying`]
                    // retries while [`RETRY_WINDOW`] lasts.
                    .retries(8)
                    .min_retry_wait(20)
                    .max_retry_wait(1000)
                };
                let commands = builder().response_timeout(RESPONSE_TIMEOUT).build()?;
                let blocking = builder()
                    .response_timeout(MAX_BLOCK + Duration::from_secs(5))
                    .build()?;
                let conn = commands.get_async_connection().await?;
                (
                    Source::Cluster(Box::new(blocking)),
                    Conn::Cluster(conn),
                    true,
                )
            }
        };
        Ok(RedisBroker {
            durable: None,
            durable_conns: Arc::new(DurableConns::new()),
            conn,
            cluster,
            blocking: Arc::new(Blocking::new(source)),
            keys: Keys::new(prefix),
            result_ttl: DEFAULT_RESULT_TTL,
            registered: Arc::new(Mutex::new(HashSet::new())),
            combiner: Arc::default(),
            next_candidates: Arc::default(),
            module_op_age: modules::DEFAULT_MODULE_OP_AGE,
            module_op_wait: modules::DEFAULT_MODULE_OP_WAIT,
            last_module_sweep: Arc::default(),
            modules_seen: Arc::default(),
        })
    }

    /// Takes a module upload or deletion still under way after `age` (default an hour) for one
    /// whose process died: maintenance then deletes its bytes if no index lists them and nothing
    /// touched them for as long.
    pub fn with_module_op_age(mut self, age: Duration) -> Self {
        self.module_op_age = age;
        self
    }

    /// Lets an upload or deletion wait up to `wait` (default 10 s) for another one of the same
    /// module to end before it is refused ([`BrokerError::ModuleBusy`]).
    pub fn with_module_op_wait(mut self, wait: Duration) -> Self {
        self.module_op_wait = wait;
        self
    }

    /// Answers whether a module exists from what this process saw in the last `window` (default
    /// 5 s) instead of asking Redis for every enqueue (see `has_module`).
    pub fn with_module_seen_for(mut self, window: Duration) -> Self {
        self.modules_seen = Arc::new(Mutex::new(modules::Seen::new(window)));
        self
    }

    /// Keeps succeeded and cancelled jobs' records for `ttl` (default a day).
    pub fn with_result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// Makes every job-state change wait for `replicas` replicas of its master (see
    /// [`DurableWrites`]); 0 turns it off. Refused when a master has fewer replicas connected.
    pub async fn with_durable_writes(
        mut self,
        replicas: u32,
        timeout: Duration,
    ) -> Result<Self, BrokerError> {
        if replicas == 0 {
            self.durable = None;
            return Ok(self);
        }
        for (node, connected) in self.replicas_per_master().await? {
            if connected < replicas {
                return Err(BrokerError::Unavailable {
                    backend: "redis",
                    reason: format!(
                        "durable writes need {replicas} replica(s) per master, but master \
                         {node} has {connected} connected"
                    ),
                });
            }
        }
        self.durable = Some(DurableWrites { replicas, timeout });
        Ok(self)
    }

    /// Each master (its address, or `redis` on a single Redis) and its connected replicas.
    async fn replicas_per_master(&self) -> Result<Vec<(String, u32)>, BrokerError> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("replication");
        let mut conn = self.conn.clone();
        let reply = match &mut conn {
            Conn::Cluster(c) => {
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                c.route_command(cmd, all).await?
            }
            other => cmd.query_async(other).await?,
        };
        let connected = |v: Value| -> Result<u32, BrokerError> {
            let text: String = redis::from_redis_value(v).map_err(RedisError::from)?;
            Ok(text
                .lines()
                .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0))
        };
        match reply {
            Value::Map(nodes) => nodes
                .into_iter()
                .map(|(node, v)| {
                    let name: String = redis::from_redis_value(node).unwrap_or_default();
                    Ok((name, connected(v)?))
                })
                .collect(),
            v => Ok(vec![("redis".to_owned(), connected(v)?)]),
        }
    }

    /// The durable-writes setting in force.
    pub fn durable_writes(&self) -> Option<DurableWrites> {
        self.durable
    }

    fn ttl_secs(&self) -> u64 {
        self.result_ttl.as_secs().max(1)
    }

    /// The key builder.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn queue_script<'s>(&self, lua: &'s Lua, queue: &str) -> Call<'s> {
        let qk = self.keys.queue(queue);
        let mut call = Call::new(lua);
        for k in &qk.keys {
            call.key(k);
        }
        call.arg(qk.job_prefix).arg(qk.done_prefix);
        call
    }

    /// Declares the records of jobs `ids` on `queue` as the call's next keys; with `done`, each
    /// followed by its waiter list (`declare` in `lua/common.lua`).
    fn declare_jobs<'i>(
        &self,
        call: &mut Call<'_>,
        queue: &str,
        ids: impl IntoIterator<Item = &'i str>,
        done: bool,
    ) {
        for id in ids {
            call.key(self.keys.job(queue, id));
            if done {
                call.key(self.keys.done(queue, id));
            }
        }
    }

    /// Declares what a script that ends jobs touches besides their records, as the call's next
    /// three keys: the queue's listings of succeeded and cancelled jobs and its unsettled batch
    /// ends (`declare_final` in `lua/common.lua`).
    fn declare_final(&self, call: &mut Call<'_>, queue: &str) {
        let qk = self.keys.queue(queue);
        let [succeeded, cancelled] = qk.finished;
        let [batch_ends, _] = qk.batches;
        for k in [succeeded, cancelled, batch_ends] {
            call.key(k);
        }
    }

    /// A cron script: the queue's seven keys, then its cron entry and next-tick hashes.
    fn cron_script<'s>(&self, lua: &'s Lua, queue: &str) -> Call<'s> {
        let mut call = self.queue_script(lua, queue);
        for k in self.keys.queue(queue).cron {
            call.key(k);
        }
        call
    }

    /// Runs a blocking command on a dedicated connection.
    async fn blocking<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, BrokerError> {
        self.blocking.run(cmd).await
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
        const CHUNK: usize = 1000;
        if let Some(id) = id {
            return self.take_dead_named(queue, action, &[id.to_owned()]).await;
        }
        // Redis's clock, like the scores the scripts write.
        let (secs, micros): (u64, u64) = self.query(redis::cmd("TIME")).await?;
        let cutoff = secs * 1000 + micros / 1000;
        let dead = &self.keys.queue(queue).keys[3];
        let mut total = 0;
        loop {
            let ids: Vec<String> = self
                .query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(dead)
                        .arg("-inf")
                        .arg(cutoff)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(CHUNK)
                        .clone(),
                )
                .await?;
            total += self.take_dead_named(queue, action, &ids).await?;
            if ids.len() < CHUNK {
                return Ok(total);
            }
        }
    }

    /// Takes jobs `ids` out of the dead set (those still in it); returns how many.
    async fn take_dead_named(
        &self,
        queue: &str,
        action: &str,
        ids: &[String],
    ) -> Result<u64, BrokerError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut inv = self.queue_script(&SCRIPTS.dead, queue);
        inv.arg(action).arg(ids);
        self.declare_jobs(&mut inv, queue, ids.iter().map(String::as_str), false);
        self.script(&inv).await
    }
}

/// The enqueue scripts' refusal of a full queue (`queue full (holds N, limit M)`) as
/// [`BrokerError::QueueFull`]; any other error as it is.
fn queue_full(queue: &str, error: BrokerError) -> BrokerError {
    let parsed = match &error {
        BrokerError::Unavailable { reason, .. } => reason
            .split_once("queue full (holds ")
            .and_then(|(_, rest)| rest.split_once(", limit "))
            .and_then(|(size, rest)| {
                Some((size.parse().ok()?, rest.split_once(')')?.0.parse().ok()?))
            }),
        _ => None,
    };
    match parsed {
        Some((size, max)) => BrokerError::QueueFull {
            queue: queue.to_owned(),
            size,
            max,
        },
        None => error,
    }
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
    /// `docs/redis-enqueue.lua` is what direct writers load: exactly the broker's enqueue script
    /// with the direct writers' checks. Regenerate with
    /// `cat lua/common.lua lua/enqueue_checks.lua lua/enqueue.lua > docs/redis-enqueue.lua`.
    #[test]
    fn the_published_enqueue_script_is_the_one_in_use() {
        assert_eq!(
            include_str!("../../../../docs/redis-enqueue.lua"),
            concat!(
                include_str!("lua/common.lua"),
                include_str!("lua/enqueue_checks.lua"),
                include_str!("lua/enqueue.lua")
            )
        );
    }

    /// The scripts' invocation limit is the Rust side's hard ceiling on args plus the overhead.
    #[test]
    fn the_scripts_invocation_limit_matches_the_args_ceiling() {
        let want = crate::job::MAX_ARGS_BYTES + crate::job::INVOCATION_OVERHEAD_BYTES;
        assert!(
            include_str!("lua/common.lua")
                .contains(&format!("local MAX_INVOCATION_BYTES = {want}\n")),
            "common.lua's MAX_INVOCATION_BYTES must be {want}"
        );
    }
}
