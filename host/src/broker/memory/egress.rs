//! The memory broker's egress limits: per host, the limit, the held slots (token → lease
//! deadline) and the recent starts, all read against the broker's clock (mirrors
//! `redis/lua/egress_acquire.lua`).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;

use super::MemoryBroker;
use crate::broker::{BrokerError, EGRESS_SLOT_POLL, EgressLimit, EgressLimits, EgressTry};

#[derive(Default)]
pub(super) struct Destination {
    limit: EgressLimit,
    slots: HashMap<String, u64>,
    starts: VecDeque<u64>,
}

#[async_trait]
impl EgressLimits for MemoryBroker {
    async fn set_egress_limit(&self, host: &str, limit: &EgressLimit) -> Result<(), BrokerError> {
        let mut state = self.lock();
        if limit.is_empty() {
            state.egress.remove(host);
        } else {
            state.egress.entry(host.to_owned()).or_default().limit = *limit;
        }
        Ok(())
    }

    async fn egress_limits(&self) -> Result<Vec<(String, EgressLimit)>, BrokerError> {
        Ok(self
            .lock()
            .egress
            .iter()
            .map(|(h, d)| (h.clone(), d.limit))
            .collect())
    }

    async fn egress_limit(&self, host: &str) -> Result<EgressLimit, BrokerError> {
        Ok(self
            .lock()
            .egress
            .get(host)
            .map(|d| d.limit)
            .unwrap_or_default())
    }

    async fn acquire_egress(
        &self,
        host: &str,
        token: &str,
        lease: Duration,
        guard: Duration,
    ) -> Result<EgressTry, BrokerError> {
        let mut state = self.lock();
        let now = state.now;
        let Some(d) = state.egress.get_mut(host) else {
            return Ok(EgressTry::Acquired);
        };
        if let Some(max) = d.limit.concurrency {
            d.slots.retain(|_, deadline| *deadline > now);
            if d.slots.len() >= max as usize {
                return Ok(EgressTry::Wait(EGRESS_SLOT_POLL));
            }
        }
        if let Some((n, per)) = d.limit.rate {
            let window = per + guard.as_millis() as u64;
            while d.starts.front().is_some_and(|t| *t + window <= now) {
                d.starts.pop_front();
            }
            if d.starts.len() >= n as usize {
                let oldest = d.starts[0];
                return Ok(EgressTry::Wait(Duration::from_millis(
                    oldest + window - now,
                )));
            }
            d.starts.push_back(now);
        }
        if d.limit.concurrency.is_some() {
            d.slots
                .insert(token.to_owned(), now + lease.as_millis() as u64);
        }
        Ok(EgressTry::Acquired)
    }

    async fn renew_egress(
        &self,
        host: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, BrokerError> {
        let mut state = self.lock();
        let now = state.now;
        Ok(
            match state
                .egress
                .get_mut(host)
                .and_then(|d| d.slots.get_mut(token))
            {
                Some(deadline) if *deadline > now => {
                    *deadline = now + lease.as_millis() as u64;
                    true
                }
                _ => false,
            },
        )
    }

    async fn release_egress(&self, host: &str, token: &str) -> Result<(), BrokerError> {
        if let Some(d) = self.lock().egress.get_mut(host) {
            d.slots.remove(token);
        }
        Ok(())
    }
}
