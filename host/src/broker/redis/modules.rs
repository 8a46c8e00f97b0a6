//! Module bytes outliving a crash: an upload writes the bytes, then the index entry; a deletion
//! removes the entry, then the bytes — in two slots on a cluster, so never in one step. Each
//! records itself first in `wasmq:{modules}:ops` and clears that at its end; the maintenance
//! pass deletes the bytes of an operation that never ended, once no index lists them and nothing
//! has touched them for [`RedisBroker::with_module_op_age`]. The entry is also a lock: one
//! operation per module at a time, so an upload and a deletion of the same module cannot
//! interleave into a listed module without bytes.
//!
//! Also what this process saw listed: whether a module exists is asked for every enqueue, and a
//! module once listed stays listed until someone deletes it — rarely, and never while jobs
//! name it unless forced. So a module seen listed in the last few seconds counts as listed
//! without a round trip ([`Seen`]). A deletion by this process forgets it at once; one by
//! another process can let enqueues through for that window, and those jobs end dead naming
//! the missing module, as a job enqueued a moment before the deletion always could.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Call, RedisBroker, SCRIPTS};
use crate::broker::BrokerError;
use crate::modules::ModuleHash;
use crate::time::now_ms;

/// How long an upload or deletion may stay under way before the maintenance pass takes it for
/// one whose process died: far above the seconds a 20 MB upload takes, so a live one is never
/// mistaken for it.
pub(super) const DEFAULT_MODULE_OP_AGE: Duration = Duration::from_secs(3600);

/// How often one process looks for operations that never ended.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// After this long another upload or deletion of the same module counts as one whose process
/// died, and a new one goes ahead: far above the second or two either takes.
pub(super) const OP_TAKEOVER: Duration = Duration::from_secs(120);

/// How long an upload or deletion waits for another one of the same module to end before it is
/// refused ([`RedisBroker::with_module_op_wait`]).
pub(super) const DEFAULT_MODULE_OP_WAIT: Duration = Duration::from_secs(10);

/// How long a module seen listed counts as listed without asking Redis again.
const SEEN_FOR: Duration = Duration::from_secs(5);

/// At most this many modules remembered: a client enqueuing for many modules makes this process
/// ask Redis more often, never hold more.
const MAX_SEEN: usize = 1024;

/// Modules seen listed, and when.
#[derive(Debug)]
pub(super) struct Seen {
    window: Duration,
    at: HashMap<ModuleHash, Instant>,
}

impl Default for Seen {
    fn default() -> Self {
        Seen::new(SEEN_FOR)
    }
}

impl Seen {
    /// Remembers modules for `window`.
    pub(super) fn new(window: Duration) -> Self {
        Seen {
            window,
            at: HashMap::new(),
        }
    }

    /// Whether `hash` was seen listed within the window.
    fn recent(&self, hash: ModuleHash) -> bool {
        self.at
            .get(&hash)
            .is_some_and(|at| at.elapsed() < self.window)
    }

    /// `hash` is listed now.
    fn listed(&mut self, hash: ModuleHash) {
        if self.window.is_zero() {
            return;
        }
        if self.at.len() >= MAX_SEEN && !self.at.contains_key(&hash) {
            let window = self.window;
            self.at.retain(|_, at| at.elapsed() < window);
            if self.at.len() >= MAX_SEEN {
                self.at.clear();
            }
        }
        self.at.insert(hash, Instant::now());
    }
}

impl RedisBroker {
    /// Whether `hash` is listed: as seen within the window, or as Redis says (remembered when
    /// listed).
    pub(super) async fn module_listed(&self, hash: ModuleHash) -> Result<bool, BrokerError> {
        if self.modules_seen.lock().expect("not poisoned").recent(hash) {
            return Ok(true);
        }
        let listed = self.index_lists(&hash.hex()).await?;
        if listed {
            self.module_seen(hash, true);
        }
        Ok(listed)
    }

    /// Whether the module index lists the module of digest `hex`, as Redis says now.
    async fn index_lists(&self, hex: &str) -> Result<bool, BrokerError> {
        self.query(
            redis::cmd("HEXISTS")
                .arg(self.keys.module_index())
                .arg(hex)
                .clone(),
        )
        .await
    }

    /// Whether the bytes of `hash` are in Redis (under their own hash tag, or where modules
    /// uploaded before that keep them).
    pub(super) async fn module_bytes_stored(&self, hash: ModuleHash) -> Result<bool, BrokerError> {
        for key in [
            self.keys.module_bytes(hash),
            self.keys.module_bytes_legacy(hash),
        ] {
            let n: u8 = self.query(redis::cmd("EXISTS").arg(key).clone()).await?;
            if n == 1 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// This process listed `hash` (`listed`) or unlisted it.
    pub(super) fn module_seen(&self, hash: ModuleHash, listed: bool) {
        let mut seen = self.modules_seen.lock().expect("not poisoned");
        if listed {
            seen.listed(hash);
        } else {
            seen.at.remove(&hash);
        }
    }

    /// Records that an upload or deletion of `hash` began, once no other operation on it is
    /// under way (`lua/module_op_begin.lua`): waits for one begun less than
    /// [`OP_TAKEOVER`] ago, up to the operation wait, then refuses. Returns its entry, for
    /// [`RedisBroker::end_module_op`].
    pub(super) async fn begin_module_op(&self, hash: ModuleHash) -> Result<String, BrokerError> {
        let token = format!("{:016x}", fastrand::u64(..));
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let mut call = Call::new(&SCRIPTS.module_op_begin);
            call.key(self.keys.module_ops())
                .arg(hash.hex())
                .arg(&token)
                .arg(OP_TAKEOVER.as_millis() as u64);
            if let Some(op) = self.script::<Option<String>>(&call).await? {
                return Ok(op);
            }
            if started.elapsed() >= self.module_op_wait {
                return Err(BrokerError::ModuleBusy(hash));
            }
            tokio::time::sleep(pause.min(self.module_op_wait.saturating_sub(started.elapsed())))
                .await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Clears the entry `op` of an operation on `hash` that ended (not one that began since).
    pub(super) async fn end_module_op(&self, hash: &str, op: &str) -> Result<(), BrokerError> {
        let mut call = Call::new(&SCRIPTS.module_op_done);
        call.key(self.keys.module_ops()).arg(hash).arg(op);
        self.script::<u8>(&call).await.map(drop)
    }

    /// Deletes the bytes of uploads and deletions that never ended (their process died in
    /// between), at most once per minute per process: only bytes that no index lists and that
    /// nothing wrote or read for the operation age. Returns how many operations it closed.
    pub(super) async fn sweep_module_ops(&self) -> Result<usize, BrokerError> {
        {
            let mut last = self.last_module_sweep.lock().expect("not poisoned");
            if last.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
                return Ok(0);
            }
            *last = Some(Instant::now());
        }
        let ops: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.keys.module_ops()).clone())
            .await?;
        let age = self.module_op_age;
        let mut closed = 0;
        for (hex, op) in ops {
            let began: u64 = op
                .split(':')
                .next()
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(0);
            if now_ms() < began.saturating_add(age.as_millis() as u64) {
                continue;
            }
            if !self.index_lists(&hex).await?
                && let Ok(hash) = format!("sha256:{hex}").parse::<ModuleHash>()
            {
                let mut orphan = Call::new(&SCRIPTS.module_orphan);
                orphan.key(self.keys.module_bytes(hash)).arg(age.as_secs());
                let gone: u8 = self.script(&orphan).await?;
                if gone == 0 {
                    continue;
                }
                self.write(
                    redis::cmd("DEL")
                        .arg(self.keys.module_bytes_legacy(hash))
                        .clone(),
                )
                .await?;
                tracing::warn!(module = %hex, "deleted the bytes of a module upload or deletion that never ended");
            }
            self.end_module_op(&hex, &op).await?;
            closed += 1;
        }
        Ok(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_at_most_max_seen_modules() {
        let mut seen = Seen::new(Duration::from_secs(3600));
        let hash = |i: usize| ModuleHash::of(&i.to_le_bytes());
        for i in 0..MAX_SEEN {
            seen.listed(hash(i));
        }
        assert_eq!(seen.at.len(), MAX_SEEN);
        assert!(seen.recent(hash(0)));
        // One more than the bound: all are still within the window, so the memory starts over.
        seen.listed(hash(MAX_SEEN));
        assert_eq!(seen.at.len(), 1);
        assert!(seen.recent(hash(MAX_SEEN)) && !seen.recent(hash(0)));
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let mut seen = Seen::new(Duration::ZERO);
        seen.listed(ModuleHash::of(b"m"));
        assert!(seen.at.is_empty() && !seen.recent(ModuleHash::of(b"m")));
    }
}
