//! The Redis broker's core: modules, enqueue (combined in `enqueue.rs`), fetch, heartbeats,
//! acknowledgements, maintenance and the job record — what a worker loop needs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::keys::hash_slot;
use super::records::{json_or_empty, parse_module_info};
use super::{Call, MAINTAIN_LIMIT, MAX_BLOCK, RedisBroker, SCRIPTS, group_by_queue};
use crate::broker::{
    Ack, Broker, BrokerError, Completion, Enqueued, Heartbeat, JobRecord, Lease, LeaseKey,
    Maintenance, ModuleInfo,
};
use crate::invocation::{Invocation, NewJob};
use crate::job::{AttemptError, FailureKind, JobState, Progress, RunReport};
use crate::modules::ModuleHash;
use crate::time::now_ms;

/// One job the fetch script leased: id, invocation JSON, attempt, lease token.
type FetchedRow = (String, String, u32, u64);

#[async_trait]
impl Broker for RedisBroker {
    async fn put_module(&self, hash: ModuleHash, bytes: &[u8]) -> Result<ModuleInfo, BrokerError> {
        let index = self.keys.module_index();
        // Uploaded before: the bytes are not sent again — unless they are missing (a deletion
        // that interleaved with an upload before operations took turns could leave that), so an
        // upload again repairs such a module.
        let listed: Option<String> = self
            .query(redis::cmd("HGET").arg(&index).arg(hash.hex()).clone())
            .await?;
        if let Some(info) = listed
            && self.module_bytes_stored(hash).await?
        {
            self.module_seen(hash, true);
            return parse_module_info(&hash.hex(), &info);
        }
        // The bytes under their own hash tag (on a cluster, the slot of their digest), then the
        // index: a listed module always has its bytes. The same digest is the same bytes, so a
        // repeated or concurrent upload writes the same value. Recorded as under way first, so
        // bytes a crash leaves unlisted are found and deleted (`modules.rs`); listing them ends
        // the record.
        let op = self.begin_module_op(hash).await?;
        self.write(
            redis::cmd("SET")
                .arg(self.keys.module_bytes(hash))
                .arg(bytes)
                .clone(),
        )
        .await?;
        let mut inv = Call::new(&SCRIPTS.put_module);
        inv.key(&index)
            .key(self.keys.module_ops())
            .arg(hash.hex())
            .arg(bytes.len())
            .arg(&op);
        let info: String = self.script(&inv).await?;
        self.module_seen(hash, true);
        parse_module_info(&hash.hex(), &info)
    }

    async fn module(&self, hash: ModuleHash) -> Result<Option<Vec<u8>>, BrokerError> {
        let key = self.keys.module_bytes(hash);
        let bytes: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&key).clone()).await?;
        if bytes.is_some() {
            return Ok(bytes);
        }
        // Uploaded before module bytes had a hash tag of their own.
        let old = self.keys.module_bytes_legacy(hash);
        self.query(redis::cmd("GET").arg(&old).clone()).await
    }

    async fn has_module(&self, hash: ModuleHash) -> Result<bool, BrokerError> {
        self.module_listed(hash).await
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, BrokerError> {
        self.enqueue_combined(jobs).await
    }

    async fn fetch(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        worker: &str,
    ) -> Result<Vec<Lease>, BrokerError> {
        // Rounds per queue: more than one only when other workers took the candidates read.
        const ROUNDS: usize = 3;
        let mut out = Vec::new();
        for queue in queues {
            let mut rows: Vec<FetchedRow> = Vec::new();
            for _ in 0..ROUNDS {
                let want = max - out.len() - rows.len();
                if want == 0 {
                    break;
                }
                let (leased, more) = self.fetch_round(queue, want, lease, worker).await?;
                rows.extend(leased);
                if !more {
                    break;
                }
            }
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
                            error: AttemptError::new(
                                attempt,
                                FailureKind::Invocation,
                                e.to_string(),
                                now_ms(),
                            ),
                            report: None,
                        },
                    }),
                }
            }
            if !refused.is_empty() {
                tracing::warn!(queue = %queue, count = refused.len(), "invalid invocations moved to the dead set");
                self.ack(&refused).await?;
            }
        }
        Ok(out)
    }

    async fn wait_for_work(&self, queues: &[String], timeout: Duration) -> Result<(), BrokerError> {
        // One BLPOP per slot over its queues' wake keys (on a single Redis, one over all of
        // them): a cluster refuses keys of several slots in one command.
        let wakes: Vec<String> = queues
            .iter()
            .map(|q| self.keys.queue(q).keys[4].clone())
            .collect();
        let mut groups: Vec<(u16, Vec<&str>)> = Vec::new();
        for key in &wakes {
            let slot = if self.cluster {
                hash_slot(key.as_bytes())
            } else {
                0
            };
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, g)) => g.push(key),
                None => groups.push((slot, vec![key])),
            }
        }
        let block = timeout.min(MAX_BLOCK).as_secs_f64().max(0.001);
        let blpop = |keys: &[&str]| {
            let mut cmd = redis::cmd("BLPOP");
            cmd.arg(keys).arg(block);
            cmd
        };
        if let [(_, keys)] = groups.as_slice() {
            let _: Option<(String, String)> = self.blocking(blpop(keys)).await?;
            return Ok(());
        }
        // Several slots: the first token ends the wait. The others' BLPOPs still run to their
        // end (a blocked connection cannot be taken back), in tasks of their own; a token one of
        // them pops after the wait ended is given back for another worker.
        let taken = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::channel(groups.len());
        for (_, keys) in &groups {
            let cmd = blpop(keys);
            let (tx, taken, blocking) = (tx.clone(), taken.clone(), self.blocking.clone());
            tokio::spawn(async move {
                match blocking.run::<Option<(String, String)>>(cmd).await {
                    Ok(Some((key, _))) => {
                        if taken.swap(true, Ordering::SeqCst) || tx.send(Ok(())).await.is_err() {
                            blocking.wake(&key).await;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                    }
                }
            });
        }
        drop(tx);
        // Every sender gone without a token: the wait timed out.
        rx.recv().await.unwrap_or(Ok(()))
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
            self.declare_jobs(&mut inv, queue, group.iter().map(|k| k.id.as_str()), false);
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

    async fn ack(&self, acks: &[Ack]) -> Result<usize, BrokerError> {
        let mut by_queue: HashMap<&str, Vec<&Ack>> = HashMap::new();
        for ack in acks {
            by_queue.entry(&ack.lease.queue).or_default().push(ack);
        }
        let mut stale = 0;
        for (queue, mut group) in by_queue {
            // Successes first, with three arguments each; then the rest, with six.
            group.sort_by_key(|a| !matches!(a.completion, Completion::Succeeded(_)));
            let succeeded = group
                .iter()
                .take_while(|a| matches!(a.completion, Completion::Succeeded(_)))
                .count();
            let mut inv = self.queue_script(&SCRIPTS.ack, queue);
            inv.arg(self.ttl_secs()).arg(succeeded);
            self.declare_final(&mut inv, queue);
            self.declare_jobs(
                &mut inv,
                queue,
                group.iter().map(|a| a.lease.id.as_str()),
                true,
            );
            for ack in group {
                inv.arg(&ack.lease.id).arg(ack.lease.token);
                let (action, delay, error, report) = match &ack.completion {
                    Completion::Succeeded(report) => {
                        inv.arg(report.to_stored_json());
                        continue;
                    }
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
                inv.arg(action)
                    .arg(delay)
                    .arg(json_or_empty(error))
                    .arg(report.map(RunReport::to_stored_json).unwrap_or_default());
            }
            let (n, batches): (usize, Vec<String>) = self.script(&inv).await?;
            stale += n;
            self.settle_batches(queue, &batches).await?;
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
            self.declare_jobs(
                &mut inv,
                queue,
                group.iter().map(|u| u.0.id.as_str()),
                false,
            );
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
            self.declare_jobs(&mut inv, queue, group.iter().map(|k| k.id.as_str()), false);
            for key in group {
                inv.arg(&key.id).arg(key.token);
            }
            let _: usize = self.script(&inv).await?;
        }
        Ok(())
    }

    async fn maintain(&self, queue: &str, own: &[LeaseKey]) -> Result<Maintenance, BrokerError> {
        // The candidates are what is due by Redis's clock, which wrote the scores (this machine's
        // may run behind it); the maintenance script checks each again. The caller's own leases
        // may be among the expired, so it reads past them.
        let own: Vec<&LeaseKey> = own.iter().filter(|k| k.queue == queue).collect();
        let mut due = self.queue_script(&SCRIPTS.due, queue);
        due.arg(MAINTAIN_LIMIT).arg(MAINTAIN_LIMIT + own.len());
        let (scheduled, leased): (Vec<String>, Vec<String>) = self.script(&due).await?;
        let mut inv = self.queue_script(&SCRIPTS.maintain, queue);
        inv.arg(self.ttl_secs())
            .arg(scheduled.len())
            .arg(leased.len())
            .arg(&scheduled)
            .arg(&leased);
        for key in &own {
            inv.arg(&key.id).arg(key.token);
        }
        self.declare_final(&mut inv, queue);
        self.declare_jobs(&mut inv, queue, scheduled.iter().map(String::as_str), false);
        self.declare_jobs(&mut inv, queue, leased.iter().map(String::as_str), true);
        let (promoted, recovered, expired_dead, batches): (u64, u64, u64, Vec<String>) =
            self.script(&inv).await?;
        self.settle_batches(queue, &batches).await?;
        self.settle_leftover_batches(queue).await?;
        if let Err(e) = self.sweep_module_ops().await {
            tracing::warn!(error = %e, "looking for module uploads that never ended failed");
        }
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
        self.declare_jobs(&mut inv, queue, [id], false);
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
}

impl RedisBroker {
    /// One fetch round on `queue`: takes up to `want` ids — and as many more as other workers
    /// have lately been taking from under this one ([`FetchHint::spare`]) — from the head of the
    /// ready set, as the previous fetch on `queue` returned it, or read now; then leases the
    /// first `want` of them still at the head, with every key declared (`lua/fetch.lua`).
    /// Returns the leases and whether another round may find more.
    async fn fetch_round(
        &self,
        queue: &str,
        want: usize,
        lease: Duration,
        worker: &str,
    ) -> Result<(Vec<FetchedRow>, bool), BrokerError> {
        let (known, spare) = {
            let mut hints = self.next_candidates.lock().expect("not poisoned");
            let hint = hints.entry(queue.to_owned()).or_default();
            (std::mem::take(&mut hint.ids), hint.spare.min(want))
        };
        let window = want + spare;
        // The head the script returns for the next round: room for a next fetch that wants
        // twice as many, so that it rarely needs a read of its own.
        let upcoming_wanted = want + want.min(64);
        let candidates: Vec<String> = match known {
            // Fewer than wanted: the queue was nearly empty then, and may not be now.
            mut ids if ids.len() >= want => {
                ids.truncate(window);
                ids
            }
            _ => {
                let ready = &self.keys.queue(queue).keys[0];
                self.query(
                    redis::cmd("ZRANGE")
                        .arg(ready)
                        .arg(0)
                        .arg(window - 1)
                        .clone(),
                )
                .await?
            }
        };
        if candidates.is_empty() {
            return Ok((Vec::new(), false));
        }
        // The request's id: resent (after a timeout) it returns the same leases.
        let request = format!("{:016x}", fastrand::u64(..));
        let mut call = self.queue_script(&SCRIPTS.fetch, queue);
        call.key(self.keys.fetch_request(queue, &request));
        for id in &candidates {
            call.key(self.keys.job(queue, id));
        }
        call.arg(want)
            .arg(lease.as_millis() as u64)
            .arg(worker)
            .arg(&request)
            .arg(upcoming_wanted)
            .arg(&candidates);
        let Fetched {
            rows,
            more,
            upcoming,
        } = self.script(&call).await?;
        let mut hints = self.next_candidates.lock().expect("not poisoned");
        let hint = hints.entry(queue.to_owned()).or_default();
        hint.ids = upcoming;
        hint.spare = next_spare(hint.spare, want, more);
        Ok((rows, more))
    }
}

/// What a worker knows of a queue's ready set between fetches.
#[derive(Default)]
pub(super) struct FetchHint {
    /// The head as the last fetch left it.
    ids: Vec<String>,
    /// Candidates a fetch declares past what it wants. Each costs Redis two strings and a
    /// look-up, wasted while this worker has the queue to itself; but when other workers took
    /// the candidates first, spare ones still at the head spare the fetch a second round.
    spare: usize,
}

/// The spare candidates after a round that wanted `want` and came back short because other
/// workers had taken some (`contended`): as many as it wanted (at most 64) after such a round,
/// then halved by every round that was not.
fn next_spare(spare: usize, want: usize, contended: bool) -> usize {
    if contended {
        want.min(64).max(spare)
    } else {
        spare / 2
    }
}

/// The fetch script's reply, sent flat: `more`, the number of leases `n`, four values per lease
/// (id, invocation JSON, attempt, token), then the ids of the next round's candidates.
struct Fetched {
    rows: Vec<FetchedRow>,
    more: bool,
    upcoming: Vec<String>,
}

impl redis::FromRedisValue for Fetched {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        use redis::from_redis_value as parse;
        let redis::Value::Array(values) = v else {
            return Err(format!("the fetch script's reply is not an array: {v:?}").into());
        };
        let mut values = values.into_iter();
        let mut next = |what: &str| {
            values
                .next()
                .ok_or_else(|| format!("the fetch script's reply ends before {what}"))
        };
        let more: u8 = parse(next("`more`")?)?;
        let n: usize = parse(next("the count")?)?;
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            rows.push((
                parse(next("an id")?)?,
                parse(next("an invocation")?)?,
                parse(next("an attempt")?)?,
                parse(next("a token")?)?,
            ));
        }
        let upcoming = values.map(parse).collect::<Result<_, _>>()?;
        Ok(Fetched {
            rows,
            more: more == 1,
            upcoming,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::next_spare;

    #[test]
    fn spare_candidates_follow_contention_and_stay_bounded() {
        // A worker alone on its queue declares only what it takes.
        assert_eq!(next_spare(0, 20, false), 0);
        // Outrun by another worker: as many spare as it wants, at most 64.
        assert_eq!(next_spare(0, 20, true), 20);
        assert_eq!(next_spare(0, 500, true), 64);
        assert_eq!(
            next_spare(40, 8, true),
            40,
            "a short round keeps what it had"
        );
        // Then halved by each uncontended round, back to none.
        let mut spare = 64;
        let mut rounds = 0;
        while spare > 0 {
            spare = next_spare(spare, 20, false);
            rounds += 1;
        }
        assert_eq!(rounds, 7);
    }
}
