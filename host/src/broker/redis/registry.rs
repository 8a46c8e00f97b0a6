//! The Redis broker's worker registry.

use async_trait::async_trait;

use super::RedisBroker;
use crate::broker::{BrokerError, Registry, WorkerInfo};

#[async_trait]
impl Registry for RedisBroker {
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
}
