//! The memory broker's worker registry.

use async_trait::async_trait;

use super::MemoryBroker;
use crate::broker::{BrokerError, Registry, WorkerInfo};

#[async_trait]
impl Registry for MemoryBroker {
    async fn worker_seen(&self, info: &WorkerInfo) -> Result<(), BrokerError> {
        self.lock().workers.insert(info.name.clone(), info.clone());
        Ok(())
    }

    async fn worker_gone(&self, name: &str) -> Result<(), BrokerError> {
        self.lock().workers.remove(name);
        Ok(())
    }
}
