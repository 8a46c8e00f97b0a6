//! The Redis broker's egress limits: per host, a limit hash, a zset of held slots and a zset
//! of recent starts under one hash tag (`lua/egress_acquire.lua` takes room atomically), and an
//! index of the limited hosts.

use std::time::Duration;

use async_trait::async_trait;

use super::{Call, RedisBroker, SCRIPTS};
use crate::broker::{BrokerError, EGRESS_SLOT_POLL, EgressLimit, EgressLimits, EgressTry};

impl RedisBroker {
    async fn read_egress_limit(&self, host: &str) -> Result<EgressLimit, BrokerError> {
        let [limit, _, _] = self.keys.egress(host);
        let (conc, rate, per): (Option<u32>, Option<u32>, Option<u64>) = self
            .query(
                redis::cmd("HMGET")
                    .arg(&limit)
                    .arg("concurrency")
                    .arg("rate")
                    .arg("per_ms")
                    .clone(),
            )
            .await?;
        Ok(EgressLimit {
            concurrency: conc,
            rate: rate.zip(per),
        })
    }
}

#[async_trait]
impl EgressLimits for RedisBroker {
    async fn set_egress_limit(&self, host: &str, limit: &EgressLimit) -> Result<(), BrokerError> {
        let [key, slots, starts] = self.keys.egress(host);
        let index = self.keys.egress_index();
        if limit.is_empty() {
            let () = self
                .pipeline(
                    redis::pipe()
                        .cmd("DEL")
                        .arg(&key)
                        .arg(&slots)
                        .arg(&starts)
                        .ignore(),
                )
                .await?;
            return self
                .query(redis::cmd("SREM").arg(&index).arg(host).clone())
                .await;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&key).ignore();
        if let Some(c) = limit.concurrency {
            pipe.cmd("HSET")
                .arg(&key)
                .arg("concurrency")
                .arg(c)
                .ignore();
        }
        if let Some((n, per)) = limit.rate {
            pipe.cmd("HSET")
                .arg(&key)
                .arg("rate")
                .arg(n)
                .arg("per_ms")
                .arg(per)
                .ignore();
        }
        self.query::<()>(redis::cmd("SADD").arg(&index).arg(host).clone())
            .await?;
        self.pipeline(pipe.atomic()).await
    }

    async fn egress_limits(&self) -> Result<Vec<(String, EgressLimit)>, BrokerError> {
        let mut hosts: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.keys.egress_index()).clone())
            .await?;
        hosts.sort();
        let mut all = Vec::with_capacity(hosts.len());
        for host in hosts {
            let limit = self.read_egress_limit(&host).await?;
            if !limit.is_empty() {
                all.push((host, limit));
            }
        }
        Ok(all)
    }

    async fn egress_limit(&self, host: &str) -> Result<EgressLimit, BrokerError> {
        self.read_egress_limit(host).await
    }

    async fn acquire_egress(
        &self,
        host: &str,
        token: &str,
        lease: Duration,
        guard: Duration,
    ) -> Result<EgressTry, BrokerError> {
        let mut inv = Call::new(&SCRIPTS.egress_acquire);
        for key in self.keys.egress(host) {
            inv.key(key);
        }
        inv.arg(token)
            .arg(lease.as_millis() as u64)
            .arg(guard.as_millis() as u64)
            .arg(EGRESS_SLOT_POLL.as_millis() as u64);
        let (acquired, wait_ms): (u8, u64) = self.script(&inv).await?;
        Ok(if acquired == 1 {
            EgressTry::Acquired
        } else {
            EgressTry::Wait(Duration::from_millis(wait_ms))
        })
    }

    async fn renew_egress(
        &self,
        host: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, BrokerError> {
        let [_, slots, _] = self.keys.egress(host);
        let mut inv = Call::new(&SCRIPTS.egress_renew);
        inv.key(slots).arg(token).arg(lease.as_millis() as u64);
        let renewed: u8 = self.script(&inv).await?;
        Ok(renewed == 1)
    }

    async fn release_egress(&self, host: &str, token: &str) -> Result<(), BrokerError> {
        let [_, slots, _] = self.keys.egress(host);
        self.query(redis::cmd("ZREM").arg(slots).arg(token).clone())
            .await
    }
}
