//! The Redis broker's sealed secrets: one hash, name → `nonce ‖ ciphertext`.

use async_trait::async_trait;

use super::RedisBroker;
use crate::broker::{BrokerError, Secrets};
use crate::secret::MAX_SECRETS;

#[async_trait]
impl Secrets for RedisBroker {
    async fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<(), BrokerError> {
        let key = self.keys.secrets();
        let (count, exists): (usize, bool) = self
            .pipeline(
                redis::pipe()
                    .cmd("HLEN")
                    .arg(&key)
                    .cmd("HEXISTS")
                    .arg(&key)
                    .arg(name),
            )
            .await?;
        if count >= MAX_SECRETS && !exists {
            return Err(BrokerError::TooManySecrets(MAX_SECRETS));
        }
        self.query(redis::cmd("HSET").arg(&key).arg(name).arg(sealed).clone())
            .await
    }

    async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        self.query(
            redis::cmd("HGET")
                .arg(self.keys.secrets())
                .arg(name)
                .clone(),
        )
        .await
    }

    async fn secret_names(&self) -> Result<Vec<String>, BrokerError> {
        let mut names: Vec<String> = self
            .query(redis::cmd("HKEYS").arg(self.keys.secrets()).clone())
            .await?;
        names.sort();
        Ok(names)
    }

    async fn delete_secret(&self, name: &str) -> Result<bool, BrokerError> {
        let n: u64 = self
            .query(
                redis::cmd("HDEL")
                    .arg(self.keys.secrets())
                    .arg(name)
                    .clone(),
            )
            .await?;
        Ok(n > 0)
    }
}
