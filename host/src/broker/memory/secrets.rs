//! The memory broker's sealed secrets.

use async_trait::async_trait;

use super::MemoryBroker;
use crate::broker::{BrokerError, Secrets};
use crate::secret::MAX_SECRETS;

#[async_trait]
impl Secrets for MemoryBroker {
    async fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<(), BrokerError> {
        let mut state = self.lock();
        if state.secrets.len() >= MAX_SECRETS && !state.secrets.contains_key(name) {
            return Err(BrokerError::TooManySecrets(MAX_SECRETS));
        }
        state.secrets.insert(name.to_owned(), sealed.to_vec());
        Ok(())
    }

    async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        Ok(self.lock().secrets.get(name).cloned())
    }

    async fn secret_names(&self) -> Result<Vec<String>, BrokerError> {
        Ok(self.lock().secrets.keys().cloned().collect())
    }

    async fn delete_secret(&self, name: &str) -> Result<bool, BrokerError> {
        Ok(self.lock().secrets.remove(name).is_some())
    }
}
