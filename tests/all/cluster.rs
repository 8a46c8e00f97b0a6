//! What only a Redis Cluster shows: queues and modules spread over its masters, idle workers
//! waiting on queues in different slots, and a single node URL refused. (The conformance, worker
//! and futures suites also run on a cluster: `on_cluster::` in `broker`, `worker` and `futures`.)

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backend::{job, upload};
use common::cluster::RedisCluster;
use common::rig::Rig;
use serde_json::json;
use wasmq::broker::redis::{Keys, RedisBroker};
use wasmq::broker::{ApiBroker, Broker};
use wasmq::job::JobState;
use wasmq::modules::ModuleHash;

async fn start_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
}

/// Three queue names whose slots are served by three different masters.
fn queues_on_three_masters(cluster: &RedisCluster) -> Vec<String> {
    let keys = Keys::new("wasmq");
    let mut ports = HashSet::new();
    let mut names = Vec::new();
    for i in 0.. {
        let name = format!("q{i}");
        let port = cluster.owner_of(&keys.queue(&name).keys[0]).port();
        if ports.insert(port) {
            names.push(name);
        }
        if names.len() == 3 {
            return names;
        }
    }
    unreachable!()
}

/// The length of list `key`, read from the node serving it.
fn llen(cluster: &RedisCluster, key: &str) -> i64 {
    redis::from_redis_value(cluster.owner_of(key).cmd(&["LLEN", key])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_queues_on_three_masters() {
    let rig = tokio::task::spawn_blocking(Rig::on_cluster).await.unwrap();
    let queues = queues_on_three_masters(rig.cluster());
    let b: Arc<dyn ApiBroker> = Arc::new(rig.broker().await);
    let hello = upload(b.as_ref(), "hello").await;
    let _worker = rig.worker("w", &["--queues", &queues.join(","), "--concurrency", "8"]);
    // One at a time while the worker is idle (woken on each queue's slot), then 40 per queue at
    // once.
    let one = |q: &String, i: usize| {
        job(hello, &format!("{q}-{i}"), json!({"name": q}), |inv| {
            inv.queue = q.clone()
        })
    };
    for q in &queues {
        let j = one(q, 0);
        common::enqueue(b.as_ref(), std::slice::from_ref(&j))
            .await
            .unwrap();
        let r = b
            .wait_job(q, j.id(), Duration::from_secs(120))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", rig.log("w"));
    }
    let many: Vec<_> = queues
        .iter()
        .flat_map(|q| (1..=40).map(move |i| (q, i)))
        .map(|(q, i)| one(q, i))
        .collect();
    common::enqueue(b.as_ref(), &many).await.unwrap();
    for j in &many {
        let r = b
            .wait_job(j.queue(), j.id(), Duration::from_secs(300))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", rig.log("w"));
    }
    // Each queue's records sit on its own master.
    let keys = Keys::new("wasmq");
    let holders: HashSet<u16> = queues
        .iter()
        .map(|q| {
            rig.cluster()
                .owner_of(&keys.job(q, &format!("{q}-1")))
                .port()
        })
        .collect();
    assert_eq!(holders.len(), 3);
    let counts = b.queues().await.unwrap();
    for q in &queues {
        let c = counts.iter().find(|c| &c.queue == q).unwrap();
        assert_eq!((c.totals.succeeded, c.ready, c.leased), (41, 0, 0), "{q}");
    }
}

/// A wait over queues in three slots ends on the first wake-up token; a token another slot's
/// waiter popped after that is given back, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_over_several_slots_wakes_on_any_and_gives_back_the_rest() {
    let cluster = start_cluster().await;
    let queues = queues_on_three_masters(&cluster);
    let b = RedisBroker::connect(&cluster.url()).await.unwrap();
    let wakes: Vec<String> = queues
        .iter()
        .map(|q| b.keys().queue(q).keys[4].clone())
        .collect();
    let total = |c: &RedisCluster| wakes.iter().map(|k| llen(c, k)).sum::<i64>();

    // A token on the third queue ends a wait that began before it was left.
    let waiting = {
        let queues = queues.clone();
        let b = RedisBroker::connect(&cluster.url()).await.unwrap();
        tokio::spawn(async move { b.wait_for_work(&queues, Duration::from_secs(60)).await })
    };
    // Every waiter's BLPOP is in place once Redis lists three blocked clients.
    let blocked = |c: &RedisCluster| -> usize {
        c.masters()
            .iter()
            .map(|m| {
                m.info("clients")
                    .lines()
                    .find_map(|l| l.strip_prefix("blocked_clients:"))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0)
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while blocked(&cluster) < 3 {
        assert!(Instant::now() < deadline, "the waiters never blocked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.owner_of(&wakes[2]).cmd(&["RPUSH", &wakes[2], "1"]);
    waiting.await.unwrap().unwrap();
    assert_eq!(total(&cluster), 0, "the token was taken");

    // Tokens on two queues at once: one ends the wait, the other comes back.
    for k in &wakes[..2] {
        cluster.owner_of(k).cmd(&["RPUSH", k, "1"]);
    }
    b.wait_for_work(&queues, Duration::from_secs(60))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while blocked(&cluster) > 0 {
        assert!(Instant::now() < deadline, "a waiter never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(total(&cluster), 1, "one token used, the other given back");
}

/// Module bytes carry their own hash tag: twelve modules do not all land on one master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_bytes_spread_over_the_masters() {
    let cluster = start_cluster().await;
    let b = RedisBroker::connect(&cluster.url()).await.unwrap();
    let mut holders = HashSet::new();
    for i in 0..12 {
        let bytes = format!("module {i}").into_bytes();
        let hash = ModuleHash::of(&bytes);
        b.put_module(hash, &bytes).await.unwrap();
        assert_eq!(b.module(hash).await.unwrap(), Some(bytes));
        holders.insert(cluster.owner_of(&b.keys().module_bytes(hash)).port());
    }
    assert_eq!(holders.len(), 3, "the twelve modules sit on every master");
}

/// One node's URL alone would fail command by command with `MOVED`: refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_url_of_a_cluster_is_refused() {
    let rig = tokio::task::spawn_blocking(Rig::on_cluster).await.unwrap();
    let node = rig.cluster().masters()[0].url();
    let out = common::wasmq_cmd(&node, rig.dir.path())
        .args(["queues"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a Redis Cluster node"), "{err}");
    // The full list works.
    rig.ok(&["queues"]);
}
