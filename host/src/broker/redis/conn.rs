//! How the Redis broker talks to Redis: the connection commands go through ([`Conn`]: a single
//! Redis's auto-reconnecting manager or a cluster connection), the connections of their own that
//! blocking commands ([`Blocking`]) and durable writes ([`DurableConns`]) run on, and the call
//! paths every command takes — retried while the failure is transient, scripts loaded on
//! `NOSCRIPT`, pipelines split per slot on a cluster, durable writes followed by `WAIT`.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RetryMethod,
    ServerErrorKind, Value,
};

use super::scripts::Call;
use super::{MAX_BLOCK, RETRY_WINDOW, RedisBroker, keys};
use crate::broker::BrokerError;

/// Longest wait for one reply before the command counts as failed (and is retried while
/// [`RETRY_WINDOW`] lasts): scripts over a few hundred jobs take milliseconds, ten seconds is a
/// struggling or stalled server.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a TCP connection to one node.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection commands go through: a single Redis's auto-reconnecting manager, a plain
/// connection (blocking commands on single Redis), or a Redis Cluster connection that routes each
/// command by its keys' slot, follows `MOVED`/`ASK` and reconnects to the nodes it needs.
#[derive(Clone)]
pub(super) enum Conn {
    Managed(ConnectionManager),
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where blocking connections come from: a blocked `BLPOP` holds its connection, so each waiter
/// takes one of its own.
pub(super) enum Source {
    Single(Box<redis::Client>),
    /// A cluster client whose replies may take [`MAX_BLOCK`] and a little more.
    Cluster(Box<ClusterClient>),
}

/// Connections for blocking commands, each used by one command at a time and kept for the next
/// one while it works.
pub(super) struct Blocking {
    source: Source,
    idle: Mutex<Vec<Conn>>,
}

impl Blocking {
    /// No connections yet: they are opened from `source` as blocking commands need them.
    pub(super) fn new(source: Source) -> Self {
        Blocking {
            source,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs a blocking command on a connection of its own.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, BrokerError> {
        let pooled = self.idle.lock().expect("not poisoned").pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.source.connect().await?,
        };
        let result = cmd.query_async(&mut conn).await;
        // A connection that failed is dropped; the next call opens a fresh one.
        if result.is_ok() {
            self.idle.lock().expect("not poisoned").push(conn);
        }
        Ok(result?)
    }

    /// Leaves a wake-up token in `key` (one at most, like the scripts' `wake`): given back when a
    /// waiter popped one nobody was waiting for any more.
    pub(super) async fn wake(&self, key: &str) {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("RPUSH")
            .arg(key)
            .arg(1)
            .ignore()
            .cmd("LTRIM")
            .arg(key)
            .arg(0)
            .arg(0)
            .ignore();
        let pooled = self.idle.lock().expect("not poisoned").pop();
        let conn = match pooled {
            Some(c) => Ok(c),
            None => self.source.connect().await,
        };
        let result = match conn {
            Ok(mut conn) => pipe.query_async::<()>(&mut conn).await.map(|()| conn),
            Err(e) => Err(e),
        };
        match result {
            Ok(conn) => self.idle.lock().expect("not poisoned").push(conn),
            // Only a hint lost: a waiting worker's wait ends within MAX_BLOCK anyway.
            Err(e) => tracing::debug!(error = %e, key, "could not give back a wake-up token"),
        }
    }
}

impl Source {
    /// A connection for blocking commands.
    pub(super) async fn connect(&self) -> Result<Conn, RedisError> {
        self.connect_waiting(MAX_BLOCK + Duration::from_secs(5))
            .await
    }

    /// A connection of its own whose replies may take up to `timeout`.
    pub(super) async fn connect_waiting(&self, timeout: Duration) -> Result<Conn, RedisError> {
        Ok(match self {
            Source::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                Conn::Plain(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Source::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
        })
    }
}

/// Connections for durable writes at most: `WAIT` holds the connection it is sent on until the
/// replicas confirm, so each durable write in flight gets a connection of its own, and writes
/// past this many wait for one.
pub(super) const DURABLE_CONNECTIONS: usize = 32;

/// The connections durable writes run on (see [`DURABLE_CONNECTIONS`]).
pub(super) struct DurableConns {
    permits: tokio::sync::Semaphore,
    idle: Mutex<Vec<Conn>>,
}

impl DurableConns {
    /// No connections yet: durable writes open them as they need them.
    pub(super) fn new() -> Self {
        DurableConns {
            permits: tokio::sync::Semaphore::new(DURABLE_CONNECTIONS),
            idle: Mutex::new(Vec::new()),
        }
    }
}

/// Durable writes: every job-state change returns only once this many replicas of its master
/// confirmed it (`WAIT`), so a failover right after cannot lose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableWrites {
    /// Replicas that must confirm each write.
    pub replicas: u32,
    /// How long to wait for them; past it the write is reported as failed (it was applied on
    /// the master, and every write is safe to repeat).
    pub timeout: Duration,
}

impl DurableWrites {
    /// An error unless `confirmed` replicas are enough.
    pub(super) fn check(&self, confirmed: u32) -> Result<(), BrokerError> {
        if confirmed >= self.replicas {
            return Ok(());
        }
        Err(BrokerError::Unavailable {
            backend: "redis",
            reason: format!(
                "the write was applied but only {confirmed} of {} replicas confirmed it within \
                 {} ms (--durable-writes): it may be lost if its master fails now, and is safe \
                 to repeat",
                self.replicas,
                self.timeout.as_millis()
            ),
        })
    }
}

/// The wait for replicas of a durable write unless told otherwise.
pub const DURABLE_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

impl RedisBroker {
    /// Runs a command or script, retrying while the failure is a dropped connection or a server
    /// that is loading.
    pub(super) async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, BrokerError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        retry_transient(|| call(self.conn.clone())).await
    }

    /// Runs a durable write (its command and `WAIT`) on a connection of its own, so that one
    /// write's wait for replicas does not hold up the commands behind it; retries like
    /// [`Self::retrying`], on a fresh connection after a dropped one.
    pub(super) async fn retrying_alone<T, F, Fut>(
        &self,
        durable: DurableWrites,
        call: F,
    ) -> Result<T, BrokerError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let pool = &self.durable_conns;
        let _permit = pool.permits.acquire().await.expect("never closed");
        let call = &call;
        retry_transient(move || async move {
            let pooled = pool.idle.lock().expect("not poisoned").pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => {
                    self.blocking
                        .source
                        .connect_waiting(durable.timeout + RESPONSE_TIMEOUT)
                        .await?
                }
            };
            let result = call(conn.clone()).await;
            // A connection that failed is dropped; the next write opens a fresh one.
            if !matches!(&result, Err(e) if transient(e)) {
                pool.idle.lock().expect("not poisoned").push(conn);
            }
            result
        })
        .await
    }

    /// Runs one command, retrying like [`Self::retrying`].
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, BrokerError> {
        self.retrying(|mut c| {
            let cmd = cmd.clone();
            async move { cmd.query_async(&mut c).await }
        })
        .await
    }

    /// Runs one write command, retrying like [`Self::retrying`]; with durable writes on, returns
    /// only once enough replicas confirmed it (`WAIT` on the same connection).
    pub(super) async fn write(&self, cmd: redis::Cmd) -> Result<(), BrokerError> {
        let Some(durable) = self.durable else {
            return self.query(cmd).await;
        };
        let mut pipe = redis::pipe();
        pipe.add_command(cmd)
            .ignore()
            .cmd("WAIT")
            .arg(durable.replicas)
            .arg(durable.timeout.as_millis() as u64);
        let (confirmed,): (u32,) = self
            .retrying_alone(durable, |mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        durable.check(confirmed)
    }

    /// Runs a pipeline (never a transaction), retrying like [`Self::retrying`]. On a cluster its
    /// commands are grouped by the slot of their first key, one pipeline per slot, and the
    /// replies put back in order: a pipeline may read several queues.
    pub(super) async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BrokerError> {
        if !self.cluster {
            return self
                .retrying(|mut c| {
                    let pipe = pipe.clone();
                    async move { pipe.query_async(&mut c).await }
                })
                .await;
        }
        let mut groups: Vec<(u16, redis::Pipeline, Vec<usize>)> = Vec::new();
        let mut total = 0;
        for (i, cmd) in pipe.cmd_iter().enumerate() {
            total += 1;
            let slot = match cmd.args_iter().nth(1) {
                Some(redis::Arg::Simple(key)) => keys::hash_slot(key),
                _ => 0,
            };
            let at = match groups.iter().position(|(s, _, _)| *s == slot) {
                Some(at) => at,
                None => {
                    groups.push((slot, redis::pipe(), Vec::new()));
                    groups.len() - 1
                }
            };
            groups[at].1.add_command(cmd.clone());
            groups[at].2.push(i);
        }
        let replies = futures_util::future::try_join_all(groups.iter().map(|(_, p, _)| {
            self.retrying(|mut c| {
                let p = p.clone();
                async move { p.query_async::<Vec<Value>>(&mut c).await }
            })
        }))
        .await?;
        let mut values = vec![Value::Nil; total];
        for ((_, _, positions), reply) in groups.iter().zip(replies) {
            for (&i, v) in positions.iter().zip(reply) {
                values[i] = v;
            }
        }
        redis::from_redis_value(Value::Array(values)).map_err(|e| RedisError::from(e).into())
    }

    /// Runs a script call, retrying like [`Self::retrying`]; with durable writes on and a script
    /// that changes job state, returns only once enough replicas confirmed it (`WAIT`, on the
    /// same connection right after it, so it waits for this write).
    pub(super) async fn script<T: redis::FromRedisValue>(
        &self,
        call: &Call<'_>,
    ) -> Result<T, BrokerError> {
        let wait = self.durable.filter(|_| call.lua.durable);
        let evalsha = call.evalsha();
        let send = |mut c: Conn| {
            let evalsha = evalsha.clone();
            async move {
                // Loaded on the first NOSCRIPT (a new or restarted node), then sent again.
                for attempt in 0..2 {
                    let sent = match wait {
                        Some(durable) => {
                            let mut pipe = redis::pipe();
                            pipe.add_command(evalsha.clone())
                                .cmd("WAIT")
                                .arg(durable.replicas)
                                .arg(durable.timeout.as_millis() as u64);
                            pipe.query_async::<(Value, u32)>(&mut c)
                                .await
                                .map(|(v, n)| (v, Some(n)))
                        }
                        None => evalsha
                            .query_async::<Value>(&mut c)
                            .await
                            .map(|v| (v, None)),
                    };
                    match sent {
                        Err(e)
                            if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
                                && attempt == 0 =>
                        {
                            call.lua.script.load_async(&mut c).await?;
                        }
                        other => return other,
                    }
                }
                unreachable!("the second attempt returns")
            }
        };
        let (reply, confirmed) = match wait {
            Some(durable) => self.retrying_alone(durable, send).await?,
            None => self.retrying(send).await?,
        };
        if let (Some(durable), Some(confirmed)) = (wait, confirmed) {
            durable.check(confirmed)?;
        }
        redis::from_redis_value(reply).map_err(|e| RedisError::from(e).into())
    }
}

/// Refuses a single-Redis URL that names a Redis Cluster node: commands for slots the node does
/// not own would fail one by one with `MOVED`.
pub(super) async fn refuse_cluster_node(conn: &mut Conn, url: &str) -> Result<(), BrokerError> {
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(conn)
        .await
        .unwrap_or_default();
    if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        return Err(BrokerError::Unavailable {
            backend: "redis",
            reason: format!(
                "{url} is a Redis Cluster node: give every master's URL (or at least two nodes), \
                 separated by commas, to use the cluster"
            ),
        });
    }
    Ok(())
}

impl From<RedisError> for BrokerError {
    fn from(e: RedisError) -> Self {
        BrokerError::Unavailable {
            backend: "redis",
            reason: e.to_string(),
        }
    }
}

/// Runs `attempt` until it succeeds, or fails for good, or has failed transiently for
/// [`RETRY_WINDOW`]: pausing 20 ms after the first failure, twice as long after each next, a
/// second at most.
async fn retry_transient<T, F, Fut>(mut attempt: F) -> Result<T, BrokerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    let start = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        match attempt().await {
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

/// Whether a failed call may succeed if repeated (connection dropped, server loading or failing
/// over, a slot moving).
pub(super) fn transient(e: &RedisError) -> bool {
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
