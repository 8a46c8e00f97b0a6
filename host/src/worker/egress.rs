//! The fleet-wide egress limits, as a worker's runs meet them: before a granted call connects,
//! it waits for room under its destination's limit in the broker — a concurrency slot held
//! under a renewed lease, and a start in the sliding rate window.
//!
//! Within one process, the calls waiting for one destination queue in order and only the first
//! asks the broker (again after the wait it was told, or as soon as a slot of this process is
//! freed), so ten thousand parked calls cost the broker one question at a time, not ten
//! thousand. Limits are read at most the grant TTL old; an unlimited destination costs nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::broker::{EgressLimit, EgressTry, WorkerBroker};
use crate::sandbox::{EgressGate, EgressPermit, GateFuture};

/// How long a held slot lives without a renewal: a worker killed mid-call frees its slots
/// within this. Renewed every third of it while the call lasts.
pub const DEFAULT_EGRESS_LEASE: Duration = Duration::from_secs(30);

/// How long to wait before asking the broker again after it failed.
const BROKER_RETRY: Duration = Duration::from_millis(200);

/// The broker's egress limits for a worker's runs. Cheap to clone.
#[derive(Clone)]
pub struct BrokerEgress {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Arc<dyn WorkerBroker>,
    lease: Duration,
    ttl: Duration,
    /// A fixed rate-window guard, instead of [`guard`]'s 2%.
    rate_guard: Option<Duration>,
    limits: Mutex<HashMap<String, (EgressLimit, Instant)>>,
    /// Held while a limit is read from the broker: ten thousand calls starting at once read it
    /// once, not ten thousand times.
    reading: tokio::sync::Mutex<()>,
    queues: Mutex<HashMap<String, Arc<HostQueue>>>,
}

/// This process's calls to one destination.
#[derive(Default)]
struct HostQueue {
    /// Taken in order by the calls waiting: the holder asks the broker.
    turn: tokio::sync::Mutex<()>,
    /// Signalled when a slot this process held is freed.
    freed: Notify,
}

impl BrokerEgress {
    /// Limits from `broker`, re-read once older than `ttl`; slots held under `lease`; each start
    /// counted for the rate window plus `rate_guard` (`None`: 2% of the window, at least 10 ms).
    pub fn new(
        broker: Arc<dyn WorkerBroker>,
        lease: Duration,
        ttl: Duration,
        rate_guard: Option<Duration>,
    ) -> Self {
        BrokerEgress {
            inner: Arc::new(Inner {
                broker,
                lease,
                ttl,
                rate_guard,
                limits: Mutex::default(),
                reading: tokio::sync::Mutex::default(),
                queues: Mutex::default(),
            }),
        }
    }
}

impl Inner {
    fn cached(&self, host: &str) -> Option<EgressLimit> {
        self.limits
            .lock()
            .expect("not poisoned")
            .get(host)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(limit, _)| *limit)
    }

    async fn limit(&self, host: &str) -> Result<EgressLimit, String> {
        if let Some(limit) = self.cached(host) {
            return Ok(limit);
        }
        let _reading = self.reading.lock().await;
        if let Some(limit) = self.cached(host) {
            return Ok(limit);
        }
        let limit = self
            .broker
            .egress_limit(host)
            .await
            .map_err(|e| format!("could not read the egress limit of `{host}`: {e}"))?;
        self.limits
            .lock()
            .expect("not poisoned")
            .insert(host.to_owned(), (limit, Instant::now()));
        Ok(limit)
    }

    fn queue(&self, host: &str) -> Arc<HostQueue> {
        self.queues
            .lock()
            .expect("not poisoned")
            .entry(host.to_owned())
            .or_default()
            .clone()
    }
}

/// What counts a start against the rate window a little longer than the window: a start is
/// counted when the broker admits it, the destination sees it a moment later, and the moment
/// varies (scheduling, connecting); the guard must cover that variation for the destination
/// never to see more than the limit in any window. 2% of the window, at least 10 ms, unless the
/// operator sets one (`--egress-rate-guard`).
fn guard(limit: &EgressLimit, fixed: Option<Duration>) -> Duration {
    limit.rate.map_or(Duration::ZERO, |(_, per)| {
        fixed.unwrap_or(Duration::from_millis((per / 50).max(10)))
    })
}

/// A held concurrency slot: renewed while alive, released when dropped.
struct Slot {
    inner: Arc<Inner>,
    host: String,
    token: String,
    renewing: tokio::task::AbortHandle,
    queue: Arc<HostQueue>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.renewing.abort();
        let inner = self.inner.clone();
        let (host, token) = (
            std::mem::take(&mut self.host),
            std::mem::take(&mut self.token),
        );
        let queue = self.queue.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = inner.broker.release_egress(&host, &token).await {
                    tracing::warn!(%host, error = %e, "egress slot not released; its lease will free it");
                }
                queue.freed.notify_one();
            });
        }
    }
}

async fn enter(inner: Arc<Inner>, host: String) -> Result<EgressPermit, String> {
    let limit = inner.limit(&host).await?;
    if limit.is_empty() {
        return Ok(None);
    }
    let queue = inner.queue(&host);
    let token = uuid::Uuid::now_v7().to_string();
    {
        let _turn = queue.turn.lock().await;
        loop {
            let wait = match inner
                .broker
                .acquire_egress(&host, &token, inner.lease, guard(&limit, inner.rate_guard))
                .await
            {
                Ok(EgressTry::Acquired) => break,
                Ok(EgressTry::Wait(wait)) => wait,
                Err(e) => {
                    tracing::warn!(%host, error = %e, "egress limit not reachable; trying again");
                    BROKER_RETRY
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = queue.freed.notified() => {}
            }
        }
    }
    if limit.concurrency.is_none() {
        return Ok(None);
    }
    let renewing = {
        let (inner, host, token) = (inner.clone(), host.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(inner.lease / 3).await;
                match inner.broker.renew_egress(&host, &token, inner.lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(%host, "an egress slot's lease ran out during its call");
                        return;
                    }
                    Err(e) => tracing::warn!(%host, error = %e, "egress slot not renewed"),
                }
            }
        })
        .abort_handle()
    };
    Ok(Some(Box::new(Slot {
        inner,
        host,
        token,
        renewing,
        queue,
    })))
}

impl EgressGate for BrokerEgress {
    fn enter(&self, host: &str) -> GateFuture {
        Box::pin(enter(self.inner.clone(), host.to_owned()))
    }
}
