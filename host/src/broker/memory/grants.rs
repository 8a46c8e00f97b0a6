//! The memory broker's module grants.

use async_trait::async_trait;

use super::MemoryBroker;
use crate::broker::{BrokerError, Grants};
use crate::grant::Grant;
use crate::modules::ModuleHash;

#[async_trait]
impl Grants for MemoryBroker {
    async fn grant(&self, module: ModuleHash) -> Result<Grant, BrokerError> {
        Ok(self.lock().grants.get(&module).cloned().unwrap_or_default())
    }

    async fn add_grant(&self, module: ModuleHash, grant: &Grant) -> Result<Grant, BrokerError> {
        let mut state = self.lock();
        let entry = state.grants.entry(module).or_default();
        entry.merge(grant);
        let whole = entry.clone();
        if whole.is_empty() {
            state.grants.remove(&module);
        }
        Ok(whole)
    }

    async fn remove_grant(&self, module: ModuleHash, grant: &Grant) -> Result<Grant, BrokerError> {
        let mut state = self.lock();
        let Some(entry) = state.grants.get_mut(&module) else {
            return Ok(Grant::default());
        };
        if grant.is_empty() {
            entry.http.clear();
            entry.secrets.clear();
        } else {
            entry.remove(grant);
        }
        let left = entry.clone();
        if left.is_empty() {
            state.grants.remove(&module);
        }
        Ok(left)
    }

    async fn grants(&self) -> Result<Vec<(ModuleHash, Grant)>, BrokerError> {
        Ok(self
            .lock()
            .grants
            .iter()
            .map(|(m, g)| (*m, g.clone()))
            .collect())
    }
}
