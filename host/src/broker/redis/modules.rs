//! Module bytes outliving a crash: an upload writes the bytes, then the index entry; a deletion
//! removes the entry, then the bytes — in two slots on a cluster, so never in one step. Each
//! records itself first in `wasmq:{modules}:ops` and clears that at its end; the maintenance
//! pass deletes the bytes of an operation that never ended, once no index lists them and nothing
//! has touched them for [`RedisBroker::with_module_op_age`].

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

impl RedisBroker {
    /// Records that an upload or deletion of `hash` began; returns its entry, for
    /// [`RedisBroker::end_module_op`].
    pub(super) async fn begin_module_op(&self, hash: ModuleHash) -> Result<String, BrokerError> {
        let op = format!("{}:{:016x}", now_ms(), fastrand::u64(..));
        self.write(
            redis::cmd("HSET")
                .arg(self.keys.module_ops())
                .arg(hash.hex())
                .arg(&op)
                .clone(),
        )
        .await?;
        Ok(op)
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
            let listed: bool = self
                .query(
                    redis::cmd("HEXISTS")
                        .arg(self.keys.module_index())
                        .arg(&hex)
                        .clone(),
                )
                .await?;
            if !listed && let Ok(hash) = format!("sha256:{hex}").parse::<ModuleHash>() {
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
