//! The memory broker's cron entries and their exactly-once ticks.

use async_trait::async_trait;

use super::MemoryBroker;
use crate::broker::{Broker, BrokerError, Cron, CronEntry};
use crate::invocation::NewJob;

#[async_trait]
impl Cron for MemoryBroker {
    async fn put_cron(&self, entry: &CronEntry) -> Result<(), BrokerError> {
        let mut state = self.lock();
        let queue = entry.invocation.queue.clone();
        state.queues.entry(queue.clone()).or_default();
        state
            .crons
            .insert((queue, entry.name.clone()), entry.clone());
        Ok(())
    }

    async fn crons(&self, queue: Option<&str>) -> Result<Vec<CronEntry>, BrokerError> {
        Ok(self
            .lock()
            .crons
            .iter()
            .filter(|((q, _), _)| queue.is_none_or(|want| want == q))
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn remove_cron(&self, queue: &str, name: &str) -> Result<bool, BrokerError> {
        Ok(self
            .lock()
            .crons
            .remove(&(queue.to_owned(), name.to_owned()))
            .is_some())
    }

    async fn fire_cron(
        &self,
        queue: &str,
        name: &str,
        tick_ms: u64,
        next_ms: u64,
        job: &NewJob,
    ) -> Result<bool, BrokerError> {
        {
            let mut state = self.lock();
            let Some(entry) = state.crons.get_mut(&(queue.to_owned(), name.to_owned())) else {
                return Ok(false);
            };
            if entry.next_ms != tick_ms {
                return Ok(false);
            }
            entry.next_ms = next_ms;
        }
        self.enqueue(std::slice::from_ref(job)).await?;
        Ok(true)
    }
}
