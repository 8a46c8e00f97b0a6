//! The Redis broker's read-only views: modules, queue counts, job listings, workers, usage.

use std::collections::HashMap;

use async_trait::async_trait;

use redis::Value;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};

use super::records::parse_module_info;
use super::{Conn, RedisBroker};
use crate::broker::{
    BrokerError, Durability, Inspect, JobPage, JobRecord, ModuleInfo, QueueCounts, QueueLimits,
    QueueTotals, Registry, WORKER_TTL, WorkerInfo,
};
use crate::invocation::Invocation;
use crate::job::JobState;
use crate::modules::ModuleHash;
use crate::time::now_ms;

#[async_trait]
impl Inspect for RedisBroker {
    async fn durability(&self) -> Durability {
        // On a cluster every node is asked (a replica becomes a master on failover), and the
        // weakest setting found is the one in force.
        let mut values: HashMap<&str, Vec<String>> = HashMap::new();
        for name in ["maxmemory-policy", "appendonly", "appendfsync"] {
            values.insert(name, self.config_get(name).await);
        }
        let weakest = |name: &str, order: &[&str]| -> Option<String> {
            let found = &values[name];
            order
                .iter()
                .find(|v| found.iter().any(|f| f == *v))
                .map(|v| (*v).to_owned())
                .or_else(|| found.first().cloned())
        };
        let eviction = values["maxmemory-policy"]
            .iter()
            .find(|p| *p != "noeviction")
            .or(values["maxmemory-policy"].first())
            .cloned();
        Durability {
            backend: if self.cluster {
                "redis-cluster"
            } else {
                "redis"
            },
            eviction,
            appendonly: weakest("appendonly", &["no", "yes"]).map(|v| v == "yes"),
            appendfsync: weakest("appendfsync", &["no", "everysec", "always"]),
            durable_writes: self.durable_writes().map(|d| d.replicas),
        }
    }

    async fn job_records(
        &self,
        queue: &str,
        ids: &[String],
    ) -> Result<Vec<Option<JobRecord>>, BrokerError> {
        self.records(queue, ids).await
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        // One attempt, no retries: a health check reports the present, not the next 30 s.
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn modules(&self) -> Result<Vec<ModuleInfo>, BrokerError> {
        let key = self.keys.module_index();
        let map: HashMap<String, String> =
            self.query(redis::cmd("HGETALL").arg(&key).clone()).await?;
        let mut all = map
            .iter()
            .map(|(hex, info)| parse_module_info(hex, info))
            .collect::<Result<Vec<_>, _>>()?;
        all.sort_by_key(|m| m.uploaded_at_ms);
        Ok(all)
    }

    async fn queues(&self) -> Result<Vec<QueueCounts>, BrokerError> {
        let names = self.queue_names().await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for q in &names {
            let qk = self.keys.queue(q);
            for key in &qk.keys[..4] {
                pipe.cmd("ZCARD").arg(key);
            }
        }
        let counts: Vec<u64> = self.pipeline(&pipe).await?;
        let mut pipe = redis::pipe();
        for q in &names {
            pipe.cmd("HGETALL").arg(&self.keys.queue(q).keys[6]);
        }
        let stats: Vec<HashMap<String, u64>> = self.pipeline(&pipe).await?;
        // The head of each ready set, and when it was enqueued.
        let mut pipe = redis::pipe();
        for q in &names {
            pipe.cmd("ZRANGE")
                .arg(&self.keys.queue(q).keys[0])
                .arg(0)
                .arg(0);
        }
        let heads: Vec<Vec<String>> = self.pipeline(&pipe).await?;
        let mut pipe = redis::pipe();
        for (q, head) in names.iter().zip(&heads) {
            match head.first() {
                Some(id) => pipe.cmd("HGET").arg(self.keys.job(q, id)).arg("enq"),
                None => pipe.cmd("ECHO").arg(""),
            };
        }
        let enqueued: Vec<Option<String>> = self.pipeline(&pipe).await?;
        Ok(names
            .into_iter()
            .zip(counts.chunks(4))
            .zip(stats)
            .zip(enqueued)
            .map(|(((queue, c), t), enq)| {
                let get = |f: &str| t.get(f).copied().unwrap_or(0);
                QueueCounts {
                    oldest_ready_ms: enq.and_then(|e| e.parse().ok()),
                    queue,
                    ready: c[0],
                    scheduled: c[1],
                    leased: c[2],
                    dead: c[3],
                    paused: get("paused") == 1,
                    limits: QueueLimits {
                        concurrency: t.get("limit_concurrency").map(|&c| c as u32),
                        rate: t
                            .get("limit_rate")
                            .map(|&r| (r as u32, get("limit_per_ms"))),
                        max_size: t.get("limit_size").copied(),
                    },
                    totals: QueueTotals {
                        enqueued: get("enqueued"),
                        succeeded: get("succeeded"),
                        failed: get("failed"),
                        retried: get("retried"),
                        dead: get("dead"),
                        cancelled: get("cancelled"),
                        recovered: get("recovered"),
                    },
                }
            })
            .collect())
    }

    async fn jobs(
        &self,
        queue: &str,
        state: JobState,
        offset: usize,
        limit: usize,
    ) -> Result<JobPage, BrokerError> {
        let qk = self.keys.queue(queue);
        let (key, newest_first) = qk.listing(state);
        if limit == 0 {
            let total = self.query(redis::cmd("ZCARD").arg(key).clone()).await?;
            return Ok(JobPage {
                total,
                jobs: Vec::new(),
            });
        }
        let mut pipe = redis::pipe();
        pipe.cmd("ZCARD")
            .arg(key)
            .cmd(if newest_first { "ZREVRANGE" } else { "ZRANGE" })
            .arg(key)
            .arg(offset)
            .arg(offset + limit - 1);
        let (total, ids): (u64, Vec<String>) = self.pipeline(&pipe).await?;
        // A listed job can be gone (its result expired) or have moved on since: skip those.
        let jobs = self
            .records(queue, &ids)
            .await?
            .into_iter()
            .flatten()
            .filter(|r| r.state == state)
            .collect();
        Ok(JobPage { total, jobs })
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        let key = self.keys.workers();
        let all: HashMap<String, String> =
            self.query(redis::cmd("HGETALL").arg(&key).clone()).await?;
        let cutoff = now_ms().saturating_sub(WORKER_TTL.as_millis() as u64);
        let mut alive = Vec::new();
        for (name, json) in all {
            match serde_json::from_str::<WorkerInfo>(&json) {
                Ok(w) if w.last_seen_ms >= cutoff => alive.push(w),
                // Gone (or unreadable): dropped, so the list does not grow forever.
                _ => self.worker_gone(&name).await?,
            }
        }
        alive.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(alive)
    }

    async fn module_usage(&self) -> Result<HashMap<ModuleHash, u64>, BrokerError> {
        const PAGE: isize = 1000;
        let mut usage = HashMap::new();
        for queue in self.queue_names().await? {
            let qk = self.keys.queue(&queue);
            for index in &qk.keys[..4] {
                let mut start = 0;
                loop {
                    let ids: Vec<String> = self
                        .query(
                            redis::cmd("ZRANGE")
                                .arg(index)
                                .arg(start)
                                .arg(start + PAGE - 1)
                                .clone(),
                        )
                        .await?;
                    if ids.is_empty() {
                        break;
                    }
                    let mut pipe = redis::pipe();
                    for id in &ids {
                        pipe.cmd("HGET").arg(self.keys.job(&queue, id)).arg("inv");
                    }
                    let invs: Vec<Option<String>> = self.pipeline(&pipe).await?;
                    for inv in invs.iter().flatten() {
                        if let Ok(inv) = Invocation::from_json(inv.as_bytes()) {
                            *usage.entry(inv.module).or_default() += 1;
                        }
                    }
                    start += PAGE;
                }
            }
        }
        Ok(usage)
    }
}

impl RedisBroker {
    /// `CONFIG GET name` of every node (one on a single Redis); empty where Redis refuses it (a
    /// managed Redis may).
    async fn config_get(&self, name: &str) -> Vec<String> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        let mut conn = self.conn.clone();
        let reply = match &mut conn {
            Conn::Cluster(c) => {
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
                c.route_command(cmd, all).await
            }
            other => cmd.query_async(other).await,
        };
        let pairs = |v: Value| -> Option<String> {
            let pair: Vec<String> = redis::from_redis_value(v).ok()?;
            pair.get(1).cloned()
        };
        match reply {
            Ok(Value::Map(nodes)) => nodes.into_iter().filter_map(|(_, v)| pairs(v)).collect(),
            Ok(v) => pairs(v).into_iter().collect(),
            Err(_) => Vec::new(),
        }
    }
}
