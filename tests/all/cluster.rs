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
use wasmq::broker::conformance::counts;
use wasmq::broker::redis::{Keys, RedisBroker};
use wasmq::broker::{ApiBroker, Broker, Inspect};
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

/// What a failover of the master of a busy queue did: acknowledged enqueues, how many of them
/// were gone after it, and the queue's succeeded total at the end.
struct Failover {
    acknowledged: usize,
    lost: usize,
    succeeded: u64,
}

/// 2,000 jobs enqueued in batches of 20 while one worker runs them. Once a quarter have been
/// acknowledged and some have run, the replica of the queue's master falls behind (frozen with
/// SIGSTOP, as a slow or partitioned replica would) while enqueues and acks go on; then the master
/// is SIGKILLed, the replica resumes and takes over, and the old master comes back as its
/// replica. `durable` is `--durable-writes 1` for the enqueuer and the worker.
async fn fail_over_a_busy_queue(durable: bool) -> Failover {
    const JOBS: usize = 2000;
    const BATCH: usize = 20;
    let mut rig = tokio::task::spawn_blocking(Rig::on_cluster).await.unwrap();
    let flags: &[&str] = if durable {
        &["--durable-writes", "1"]
    } else {
        &[]
    };
    let module = rig.upload("chaos");
    let hash: ModuleHash = module.parse().unwrap();
    let connect = |url: String| async move {
        let b = RedisBroker::connect(&url).await.unwrap();
        let n = if durable { 1 } else { 0 };
        b.with_durable_writes(n, Duration::from_secs(5))
            .await
            .unwrap()
    };
    let b = connect(rig.url()).await;
    let worker = rig.worker(
        "w",
        &[&["--concurrency", "16", "--lease", "5s"], flags].concat(),
    );

    // 16 KiB of padding per job: what the master sends a frozen replica soon outgrows the
    // socket buffers between them and waits in the master's memory.
    let args = json!({"mode": "sleep", "ms": 5, "padding": "x".repeat(16 << 10)});
    // The enqueuer: each batch retried until acknowledged (enqueue is idempotent by id).
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let enqueuer = {
        let acknowledged = acknowledged.clone();
        let b = connect(rig.url()).await;
        tokio::spawn(async move {
            for start in (0..JOBS).step_by(BATCH) {
                let batch: Vec<_> = (start..start + BATCH)
                    .map(|i| job(hash, &format!("j{i}"), args.clone(), |_| {}))
                    .collect();
                let deadline = Instant::now() + Duration::from_secs(300);
                loop {
                    match b.enqueue(&batch).await {
                        Ok(_) => break,
                        Err(e) => {
                            assert!(Instant::now() < deadline, "enqueue never recovered: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                acknowledged
                    .lock()
                    .unwrap()
                    .extend(batch.iter().map(|j| j.id().to_owned()));
            }
        })
    };

    // Kill the queue's master mid-run.
    let ready_key = b.keys().queue("default").keys[0].clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let enqueued = acknowledged.lock().unwrap().len();
        let succeeded = counts(&b).await.totals.succeeded;
        if enqueued >= JOBS / 4 && succeeded >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress:\n{}", rig.log("w"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let port = rig.cluster().owner_of(&ready_key).port();
    let at = rig.cluster().index_of(port);
    let replica = rig
        .cluster()
        .index_of(rig.cluster().replica_of(port).port());
    rig.cluster().nodes[replica].freeze();
    let at_freeze = acknowledged.lock().unwrap().len();
    // Writes go on for a while (without durable writes they are acknowledged by the master
    // alone; with them they wait for the frozen replica and time out).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until && acknowledged.lock().unwrap().len() < at_freeze + 400 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.cluster_mut().nodes[at].kill();
    let at_kill = acknowledged.lock().unwrap().len();
    rig.cluster().nodes[replica].thaw();
    tokio::task::block_in_place(|| rig.cluster().wait_failover(&ready_key, port));
    // The old master rejoins as the new one's replica (durable writes need one).
    rig.cluster_mut().nodes[at].restart();
    tokio::task::block_in_place(|| rig.cluster().wait_healthy());

    enqueuer.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), JOBS);
    let mut lost = 0;
    for id in &acknowledged {
        match b
            .wait_job("default", id, Duration::from_secs(300))
            .await
            .unwrap()
        {
            None => lost += 1,
            Some(r) => assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", rig.log("w")),
        }
    }
    drop(worker);
    let succeeded = counts(&b).await.totals.succeeded;
    println!(
        "durable writes {}: replica frozen after {at_freeze} of {JOBS} enqueues were \
         acknowledged, master killed after {at_kill}; {lost} acknowledged jobs lost; succeeded \
         total {succeeded}",
        if durable { "1" } else { "off" }
    );
    Failover {
        acknowledged: acknowledged.len(),
        lost,
        succeeded,
    }
}

/// With `--durable-writes 1` nothing acknowledged is lost to a failover, and every job's success
/// is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_durable_writes_a_failover_loses_no_acknowledged_job() {
    let f = fail_over_a_busy_queue(true).await;
    assert_eq!(f.lost, 0);
    assert_eq!(f.succeeded, f.acknowledged as u64);
}

/// Without it the master's acknowledgement is all there is: whatever had not reached the replica
/// when it died is gone (the figure is printed for the README). What survived still ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_durable_writes_a_failover_reports_what_it_lost() {
    let f = fail_over_a_busy_queue(false).await;
    assert!(f.lost < f.acknowledged);
    assert!(
        f.succeeded <= f.acknowledged as u64,
        "no success counted twice"
    );
}

/// Moves `slot` from the master on `from` to the master on `to` the way `redis-cli --cluster
/// reshard` does — importing/migrating, the keys `MIGRATE`d ten at a time with a pause between
/// (so the move is under way for a while), then the slot assigned to its new master everywhere.
async fn migrate_slot(cluster: &RedisCluster, slot: u16, from: u16, to: u16) -> usize {
    let node = |port: u16| cluster.nodes.iter().find(|n| n.port() == port).unwrap();
    let id = |port: u16| -> String {
        redis::from_redis_value(node(port).cmd(&["CLUSTER", "MYID"])).unwrap()
    };
    let (from_id, to_id) = (id(from), id(to));
    let slot = slot.to_string();
    node(to).cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    node(from).cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    let mut moved = 0;
    loop {
        let keys: Vec<String> =
            redis::from_redis_value(node(from).cmd(&["CLUSTER", "GETKEYSINSLOT", &slot, "10"]))
                .unwrap();
        if keys.is_empty() {
            break;
        }
        let port = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        node(from).cmd(&args);
        moved += keys.len();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in cluster.masters() {
        n.cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
    moved
}

/// The slot of a busy queue moves to another master while a worker runs it: every job ends
/// succeeded, and — its worker alive throughout — none ran twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_queue_moves_to_another_master_without_losing_a_job() {
    let rig = tokio::task::spawn_blocking(Rig::on_cluster).await.unwrap();
    let b = rig.broker().await;
    let chaos = rig.upload("chaos");
    let ids = rig.enqueue_many(2000, "m", &chaos, json!({"mode": "sleep", "ms": 5}));
    let worker = rig.worker("w", &["--concurrency", "16"]);
    let ready = b.keys().queue("default").keys[0].clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    while b.queues().await.unwrap()[0].totals.succeeded < 100 {
        assert!(Instant::now() < deadline, "no progress:\n{}", rig.log("w"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let from = rig.cluster().owner_of(&ready).port();
    let to = rig
        .cluster()
        .masters()
        .iter()
        .map(|m| m.port())
        .find(|&p| p != from)
        .unwrap();
    let moved = migrate_slot(
        rig.cluster(),
        wasmq::broker::redis::hash_slot(ready.as_bytes()),
        from,
        to,
    )
    .await;
    let during = b.queues().await.unwrap()[0].totals.succeeded;
    assert_eq!(rig.cluster().owner_of(&ready).port(), to);
    for id in &ids {
        let r = b
            .wait_job("default", id, Duration::from_secs(300))
            .await
            .unwrap();
        let r = r.unwrap_or_else(|| panic!("{id} is gone\n{}", rig.log("w")));
        assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", rig.log("w"));
        assert_eq!(r.attempts, 1, "{id} ran twice");
    }
    drop(worker);
    println!(
        "moved {moved} keys while the worker ran; {during} jobs had succeeded by the end of the move"
    );
}

/// A managed cluster as users run it: every node speaking only TLS to clients (a certificate
/// from an authority made by the test; replication and the cluster bus over TLS too) and the
/// README's least-privilege ACL user on every node. The CLI uploads and enqueues onto queues on
/// three masters and a worker runs them, as that user over `rediss://`.
#[test]
fn a_least_privilege_user_runs_jobs_on_a_tls_cluster() {
    let cluster = RedisCluster::start_tls(3, 1);
    let queues = queues_on_three_masters(&cluster);
    let mut setuser = vec!["ACL", "SETUSER", "wasmq"];
    setuser.extend_from_slice(crate::cli::LEAST_PRIVILEGE);
    // What the README adds for a cluster: its slot map.
    setuser.push("+cluster|slots");
    for node in &cluster.nodes {
        node.cmd(&setuser);
    }
    let cli = common::CliOverTls::new(&cluster.url(), &cluster.ca_pem().unwrap());
    cli.assert_refused_without_the_ca();

    let hash = cli
        .run(&["upload", &common::job_path("hello")])
        .trim()
        .to_owned();
    for q in &queues {
        let args = format!(r#"{{"name":"{q}"}}"#);
        cli.run(&["enqueue", &hash, "--queue", q, "--args", &args, "--id", q]);
    }
    let mut worker = cli
        .cmd(&["worker", "--queues", &queues.join(",")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let records: Vec<String> = queues
        .iter()
        .map(|q| cli.run(&["job", q, "--queue", q, "--wait"]))
        .collect();
    let _ = worker.kill();
    let _ = worker.wait();
    for (q, record) in queues.iter().zip(&records) {
        assert!(record.contains(&format!("Hello, {q}!")), "{record}");
    }
}
