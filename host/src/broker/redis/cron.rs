//! The Redis broker's cron entries and their exactly-once ticks.

use std::collections::HashMap;

use async_trait::async_trait;

use super::records::corrupt;
use super::{RedisBroker, SCRIPTS};
use crate::broker::{BrokerError, Cron, CronEntry};
use crate::invocation::NewJob;

#[async_trait]
impl Cron for RedisBroker {
    async fn put_cron(&self, entry: &CronEntry) -> Result<(), BrokerError> {
        let queue = &entry.invocation.queue;
        self.register_queues([queue.as_str()]).await?;
        let mut inv = self.cron_script(&SCRIPTS.cron_put, queue);
        inv.arg(&entry.name)
            .arg(serde_json::to_string(entry).expect("plain data serialises"))
            .arg(entry.next_ms);
        let _: u32 = self.script(&inv).await?;
        Ok(())
    }

    async fn crons(&self, queue: Option<&str>) -> Result<Vec<CronEntry>, BrokerError> {
        let queues = match queue {
            Some(q) => vec![q.to_owned()],
            None => self.queue_names().await?,
        };
        let mut all = Vec::new();
        for q in queues {
            let [entries_key, next_key] = self.keys.queue(&q).cron;
            let mut pipe = redis::pipe();
            pipe.cmd("HGETALL")
                .arg(&entries_key)
                .cmd("HGETALL")
                .arg(&next_key);
            let (entries, next): (HashMap<String, String>, HashMap<String, u64>) =
                self.pipeline(&pipe).await?;
            for (name, json) in entries {
                let mut entry: CronEntry = serde_json::from_str(&json)
                    .map_err(|e| corrupt(&format!("cron {q}/{name}"), e))?;
                entry.next_ms = next.get(&name).copied().unwrap_or(0);
                all.push(entry);
            }
        }
        all.sort_by(|a, b| (&a.invocation.queue, &a.name).cmp(&(&b.invocation.queue, &b.name)));
        Ok(all)
    }

    async fn remove_cron(&self, queue: &str, name: &str) -> Result<bool, BrokerError> {
        let mut inv = self.cron_script(&SCRIPTS.cron_remove, queue);
        inv.arg(name);
        let n: u32 = self.script(&inv).await?;
        Ok(n == 1)
    }

    async fn fire_cron(
        &self,
        queue: &str,
        name: &str,
        tick_ms: u64,
        next_ms: u64,
        job: &NewJob,
    ) -> Result<bool, BrokerError> {
        let mut inv = self.cron_script(&SCRIPTS.cron_fire, queue);
        inv.arg(name)
            .arg(tick_ms)
            .arg(next_ms)
            .arg(job.id())
            .arg(serde_json::to_string(&job.invocation).expect("plain data serialises"))
            .arg(job.invocation.priority)
            .arg(job.invocation.max_attempts);
        self.declare_jobs(&mut inv, queue, [job.id()], false);
        let fired: u32 = self.script(&inv).await?;
        Ok(fired == 1)
    }
}
