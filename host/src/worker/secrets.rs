//! Granted secrets for the worker's runs: read from the broker when a guest asks, opened with
//! the operator's key. The value never leaves this process except to the guest that asked.

use std::sync::Arc;

use crate::broker::WorkerBroker;
use crate::sandbox::{SecretFuture, SecretSource};
use crate::secret::{SecretError, SecretKey};

/// Opens secrets from the broker with the operator's key (none: every read says so).
pub struct BrokerSecrets {
    broker: Arc<dyn WorkerBroker>,
    key: Option<SecretKey>,
}

impl BrokerSecrets {
    /// Secrets from `broker`, opened with `key`.
    pub fn new(broker: Arc<dyn WorkerBroker>, key: Option<SecretKey>) -> Self {
        BrokerSecrets { broker, key }
    }
}

impl SecretSource for BrokerSecrets {
    fn secret(&self, name: &str) -> SecretFuture {
        let broker = self.broker.clone();
        let key = self.key.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let key = key.ok_or_else(|| {
                tracing::warn!(secret = %name, "a job asked for a secret; this worker has no WASMQ_SECRET_KEY");
                format!("this worker cannot open secret `{name}`: {}", SecretError::NoKey)
            })?;
            let sealed = broker
                .secret(&name)
                .await
                .map_err(|e| format!("secret `{name}` could not be read: {e}"))?
                .ok_or_else(|| format!("secret `{name}` is not set (`wasmq secret set {name}`)"))?;
            key.open(&name, &sealed).map_err(|e| {
                tracing::warn!(secret = %name, error = %e, "a secret did not open");
                e.to_string()
            })
        })
    }
}
