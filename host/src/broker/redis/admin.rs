//! The Redis broker's operator actions: the dead set, run now, limits, pause, cancel, deleting a
//! module.

use async_trait::async_trait;

use super::records::corrupt;
use super::{RedisBroker, SCRIPTS};
use crate::broker::{
    Admin, Broker, BrokerError, CancelOutcome, Inspect, ModuleDeletion, QueueLimits,
};
use crate::job::JobState;
use crate::modules::ModuleHash;

#[async_trait]
impl Admin for RedisBroker {
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
        self.declare_jobs(&mut inv, queue, [id], false);
        let n: u32 = self.script(&inv).await?;
        Ok(n == 1)
    }

    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<(), BrokerError> {
        self.register_queues([queue]).await?;
        let (rate, per_ms) = limits.rate.unwrap_or((0, 0));
        let mut inv = self.queue_script(&SCRIPTS.limits, queue);
        inv.arg(limits.concurrency.unwrap_or(0))
            .arg(rate)
            .arg(per_ms)
            .arg(limits.max_size.unwrap_or(0));
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
        self.declare_final(&mut inv, queue);
        self.declare_jobs(&mut inv, queue, [id], true);
        let (outcome, batches): (String, Vec<String>) = self.script(&inv).await?;
        self.settle_batches(queue, &batches).await?;
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
        // Unlisted first, then the bytes (another slot): a crash between leaves bytes nobody
        // lists, never a listed module without bytes — and recorded as under way before either,
        // so maintenance deletes what such a crash leaves (`modules.rs`).
        let op = self.begin_module_op(hash).await?;
        let n: u32 = self
            .query(
                redis::cmd("HDEL")
                    .arg(self.keys.module_index())
                    .arg(hash.hex())
                    .clone(),
            )
            .await?;
        self.module_seen(hash, false);
        for key in [
            self.keys.module_bytes(hash),
            self.keys.module_bytes_legacy(hash),
        ] {
            self.query::<()>(redis::cmd("DEL").arg(key).clone()).await?;
        }
        self.end_module_op(&hash.hex(), &op).await?;
        Ok(if n == 1 {
            ModuleDeletion::Deleted
        } else {
            ModuleDeletion::NotFound
        })
    }
}
