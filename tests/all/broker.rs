//! The broker's behaviour: the conformance suite (`wasmq::broker::conformance`) on the in-memory
//! broker, on paused time, and on a real Redis (each test starts its own `redis-server`); then
//! what only Redis can show — what direct writers into Redis meet.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::cluster::RedisCluster;
use common::redis::RedisServer;
use wasmq::broker::conformance::{Store, counts, fetch, ids, job, module, put};
use wasmq::broker::memory::MemoryBroker;
use wasmq::broker::redis::RedisBroker;
use wasmq::broker::{ApiBroker, Broker};
use wasmq::time::TokioClock;

/// The memory broker reads tokio's clock, and its cases run on paused time: leases, backoff and
/// TTLs expire when the case's sleeps say so, however slow the machine.
struct Memory;

#[async_trait]
impl Store for Memory {
    async fn broker(&self, result_ttl: Duration) -> Arc<dyn ApiBroker> {
        Arc::new(
            MemoryBroker::new()
                .with_result_ttl(result_ttl)
                .with_clock(TokioClock::new()),
        )
    }
}

/// A private Redis for one case — a `redis-server`, or a cluster of three masters each with a
/// replica — stopped when the case ends.
enum Redis {
    Server(RedisServer),
    Cluster(RedisCluster),
}

#[async_trait]
impl Store for Redis {
    async fn broker(&self, result_ttl: Duration) -> Arc<dyn ApiBroker> {
        let url = match self {
            Redis::Server(server) => server.url(),
            Redis::Cluster(cluster) => cluster.url(),
        };
        Arc::new(
            RedisBroker::connect(&url)
                .await
                .unwrap()
                .with_result_ttl(result_ttl),
        )
    }
}

mod on_memory {
    wasmq::broker_conformance!(super::Memory, tokio::test(start_paused = true));
}

mod on_redis {
    wasmq::broker_conformance!(
        super::Redis::Server(crate::common::redis::RedisServer::start()),
        tokio::test
    );
}

mod on_cluster {
    wasmq::broker_conformance!(
        super::Redis::Cluster(crate::common::cluster::RedisCluster::start()),
        tokio::test
    );
}

/// Only Redis can hold what a careless direct writer put there.
#[tokio::test]
async fn invalid_invocations_written_to_redis_go_dead_with_the_reason() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    put(&broker, &[job("fine", |_| {})]).await;
    // Damage the stored invocation as a direct writer might.
    server.cmd(&[
        "HSET",
        "wasmq:{default}:job:fine",
        "inv",
        r#"{"module":"sha256:00","extra":1}"#,
    ]);
    assert!(fetch(&broker, 5).await.is_empty(), "not handed to a worker");
    let r = broker.job(None, "fine").await;
    // The record's `inv` no longer parses, so reading it reports corruption by name…
    let err = r.unwrap_err().to_string();
    assert!(err.contains("corrupt record for `default/fine`"), "{err}");
    // …and the job sits in the dead set instead of blocking the queue.
    let c = counts(&broker).await;
    assert_eq!((c.ready, c.leased, c.dead), (0, 0, 1));
    let reason = server.cmd(&["HGET", "wasmq:{default}:job:fine", "err"]);
    let reason: String = redis::from_redis_value(reason).unwrap();
    assert!(reason.contains("\"kind\":\"invocation\""), "{reason}");
    assert!(
        reason.contains("must be `sha256:` followed by 64"),
        "{reason}"
    );
}

/// A batch job's ack only counts its end; settling the batch and enqueuing its callback are the
/// next step. A worker that died between the two leaves the count (or the due batch) behind, and
/// any worker's maintenance pass finishes it: the callback is enqueued once, never twice.
#[tokio::test]
async fn a_batch_left_unsettled_by_a_dead_worker_calls_back_once_on_the_next_pass() {
    use wasmq::broker::conformance::{ids, ok};
    use wasmq::broker::{Batches, NewBatch};
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    broker.put_module(module(), b"x").await.unwrap();
    let batch = NewBatch {
        id: "B".into(),
        jobs: vec![job("a", |_| {}), job("b", |_| {})],
        callback: job("batch:B:callback", |_| {}),
    };
    broker.enqueue_batch(&batch).await.unwrap();
    let leases = fetch(&broker, 2).await;
    broker
        .ack(&leases.iter().map(ok).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(ids(&fetch(&broker, 5).await), ["batch:B:callback"]);
    let callback_key = "wasmq:{default}:job:batch:B:callback";
    let callback_inv = server.cmd(&["HGET", callback_key, "inv"]);
    let callback_inv: String = redis::from_redis_value(callback_inv).unwrap();

    // As if the last ack's script ran and its worker was SIGKILLed before settling: `b`'s end
    // is counted, the batch still shows it pending, and there is no callback.
    let unsettled = |server: &RedisServer| {
        server.cmd(&["DEL", callback_key]);
        server.cmd(&["ZREM", "wasmq:{default}:leased", "batch:B:callback"]);
        server.cmd(&["HDEL", "wasmq:{default}:batch:B", "done"]);
    };
    unsettled(&server);
    server.cmd(&["HSET", "wasmq:{default}:batch:B", "pending", "1"]);
    server.cmd(&["HSET", "wasmq:{default}:batch_ends", "B", "1"]);
    // Reading the batch counts the unsettled end already.
    assert_eq!(
        broker.batch("default", "B").await.unwrap().unwrap().pending,
        0
    );
    for _ in 0..2 {
        broker.maintain("default", &[]).await.unwrap();
    }
    let again = fetch(&broker, 5).await;
    assert_eq!(ids(&again), ["batch:B:callback"], "enqueued once");
    assert_eq!(
        again[0].invocation.args,
        serde_json::from_str::<serde_json::Value>(&callback_inv).unwrap()["args"]
    );
    let info = broker.batch("default", "B").await.unwrap().unwrap();
    assert_eq!((info.pending, info.done_at_ms.is_some()), (0, true));

    // As if the worker died after settling, before the callback: the batch is due.
    unsettled(&server);
    server.cmd(&["SADD", "wasmq:{default}:batches_due", "B"]);
    broker.maintain("default", &[]).await.unwrap();
    broker.maintain("default", &[]).await.unwrap();
    assert_eq!(ids(&fetch(&broker, 5).await), ["batch:B:callback"]);
    let left: i64 =
        redis::from_redis_value(server.cmd(&["SCARD", "wasmq:{default}:batches_due"])).unwrap();
    let ends: i64 =
        redis::from_redis_value(server.cmd(&["HLEN", "wasmq:{default}:batch_ends"])).unwrap();
    assert_eq!((left, ends), (0, 0));
}

/// Small enqueues to one queue arriving together go out as one script call (a call's fixed cost
/// is most of what a one-job enqueue costs Redis), and each is answered as if it had come alone:
/// of two calls for one id one created it; on a queue with room for ten, ten calls of twenty get
/// in and the rest are refused as full, each on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_to_one_queue_go_out_together_and_are_answered_alone() {
    use wasmq::broker::{Admin, BrokerError, Enqueued, QueueLimits};
    let server = RedisServer::start();
    let broker = Arc::new(RedisBroker::connect(&server.url()).await.unwrap());
    broker.put_module(module(), b"x").await.unwrap();
    put(broker.as_ref(), &[job("warm-up", |_| {})]).await;
    server.cmd(&["CONFIG", "RESETSTAT"]);
    // Redis holds every call for a second, so the calls of the 200 below all wait at once.
    server.cmd(&["CLIENT", "PAUSE", "1000", "WRITE"]);
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let b = broker.clone();
            let one = job(&format!("c{}", i / 2), |_| {});
            tokio::spawn(async move { b.enqueue(&[one]).await.unwrap()[0] })
        })
        .collect();
    let mut created = 0;
    for call in calls {
        if call.await.unwrap() == Enqueued::Created {
            created += 1;
        }
    }
    assert_eq!(
        created, 100,
        "each id created by exactly one of its two calls"
    );
    let scripts = command_calls(&server, "evalsha");
    println!("200 enqueue calls went out as {scripts} script calls");
    assert!(scripts <= 20, "{scripts} script calls for 200 enqueues");

    let limits = QueueLimits {
        max_size: Some(10),
        ..QueueLimits::default()
    };
    broker.set_limits("small", &limits).await.unwrap();
    server.cmd(&["CLIENT", "PAUSE", "1000", "WRITE"]);
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let b = broker.clone();
            let one = job(&format!("s{i}"), |j| j.queue = "small".into());
            tokio::spawn(async move { b.enqueue(&[one]).await })
        })
        .collect();
    let (mut ok, mut full) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(answer) => {
                assert_eq!(answer, [Enqueued::Created]);
                ok += 1;
            }
            Err(BrokerError::QueueFull { max, .. }) => {
                assert_eq!(max, 10);
                full += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!((ok, full), (10, 10));
}

/// How many job records each fetch script call since logging began (or the last call) declared
/// (its candidates), oldest first.
fn fetch_candidates_declared(server: &RedisServer) -> Vec<usize> {
    server
        .logged()
        .into_iter()
        .filter_map(|c| {
            // EVALSHA sha numkeys: the queue's seven keys, the request's, then the candidates.
            // Only the fetch script passes the worker's name (`w1`) as an argument.
            let args = &c.args;
            (args.first()?.eq_ignore_ascii_case("evalsha") && args.iter().any(|a| a == "w1"))
                .then(|| args[2].parse::<usize>().ok().map(|keys| keys - 8))
                .flatten()
        })
        .collect()
}

/// How many times Redis ran `command` since its stats were reset (commands that scripts call
/// included).
fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let stats: String = redis::from_redis_value(server.cmd(&["INFO", "commandstats"])).unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One upload or deletion of a module at a time: the bytes and the index are two slots on a
/// cluster, and an upload (bytes, then index) interleaved with a deletion (index, then bytes)
/// could leave a listed module without its bytes — every job naming it would then die, and an
/// upload again would find it listed. An operation waits for another under way, is refused
/// naming the module when that one outlasts its wait, and takes over one begun so long ago that
/// its process died.
#[tokio::test]
async fn uploads_and_deletions_of_one_module_take_turns() {
    use wasmq::broker::{Admin, BrokerError, ModuleDeletion};
    use wasmq::modules::ModuleHash;
    let server = RedisServer::start();
    let hash = ModuleHash::of(b"m");
    let ops = "wasmq:{modules}:ops";
    let bytes_key = format!("wasmq:{{module:{}}}:bytes", hash.hex());
    let under_way = |since_ms: u64| {
        server.cmd(&[
            "HSET",
            ops,
            &hash.hex(),
            &format!("{since_ms}:0123456789abcdef"),
        ]);
    };
    let redis_now = || -> u64 {
        let t: Vec<String> = redis::from_redis_value(server.cmd(&["TIME"])).unwrap();
        t[0].parse::<u64>().unwrap() * 1000 + t[1].parse::<u64>().unwrap() / 1000
    };
    let whole = |server: &RedisServer| -> (bool, bool) {
        let listed = server.cmd(&["HEXISTS", "wasmq:{modules}:index", &hash.hex()]);
        let stored = server.cmd(&["EXISTS", &bytes_key]);
        (
            listed == redis::Value::Int(1),
            stored == redis::Value::Int(1),
        )
    };
    let a = RedisBroker::connect(&server.url()).await.unwrap();

    // Another operation begun just now: the upload waits for it, then goes ahead.
    under_way(redis_now());
    let upload = tokio::spawn({
        let a = a.clone();
        async move { a.put_module(hash, b"m").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!upload.is_finished(), "waits while another is under way");
    server.cmd(&["HDEL", ops, &hash.hex()]);
    tokio::time::timeout(Duration::from_secs(30), upload)
        .await
        .expect("goes ahead once the other ended")
        .unwrap()
        .unwrap();
    assert_eq!(whole(&server), (true, true));

    // Under way for longer than a deletion may wait: refused, naming the module.
    let impatient = RedisBroker::connect(&server.url())
        .await
        .unwrap()
        .with_module_op_wait(Duration::from_millis(200));
    under_way(redis_now());
    let refused = impatient.delete_module(hash, true).await.unwrap_err();
    assert!(matches!(refused, BrokerError::ModuleBusy(h) if h == hash));
    assert!(refused.to_string().contains("under way"), "{refused}");
    assert_eq!(whole(&server), (true, true), "nothing changed");

    // Listed without its bytes (what an interleaving left before operations took turns): an
    // upload again stores them.
    server.cmd(&["HDEL", ops, &hash.hex()]);
    server.cmd(&["DEL", &bytes_key]);
    a.put_module(hash, b"m").await.unwrap();
    assert_eq!(whole(&server), (true, true), "repaired by an upload again");

    // Begun long ago, by a process that died: taken over.
    under_way(1);
    assert_eq!(
        impatient.delete_module(hash, true).await.unwrap(),
        ModuleDeletion::Deleted
    );
    assert_eq!(whole(&server), (false, false));
}

/// Whether an enqueue's module exists is asked of Redis once per window, not per job: the
/// process remembers a module it saw listed. Its own deletion counts at once; another process's
/// within the window is not seen (the jobs then end dead naming the module); with no window
/// every question goes to Redis.
#[tokio::test]
async fn a_module_seen_listed_is_asked_for_once_per_window() {
    use wasmq::broker::{Admin, ModuleDeletion};
    let server = RedisServer::start();
    let connect = |window: Duration| {
        let url = server.url();
        async move {
            RedisBroker::connect(&url)
                .await
                .unwrap()
                .with_module_seen_for(window)
        }
    };
    // An hour: long past the slowest test run.
    let a = connect(Duration::from_secs(3600)).await;
    let b = connect(Duration::from_secs(3600)).await;
    let asks = connect(Duration::ZERO).await;
    b.put_module(module(), b"bytes").await.unwrap();

    server.cmd(&["CONFIG", "RESETSTAT"]);
    for _ in 0..5 {
        assert!(a.has_module(module()).await.unwrap());
    }
    assert_eq!(command_calls(&server, "hexists"), 1, "asked once");
    for _ in 0..2 {
        assert!(asks.has_module(module()).await.unwrap());
    }
    assert_eq!(
        command_calls(&server, "hexists"),
        3,
        "no window: asked each time"
    );

    assert_eq!(
        b.delete_module(module(), true).await.unwrap(),
        ModuleDeletion::Deleted
    );
    assert!(!b.has_module(module()).await.unwrap(), "its own deletion");
    assert!(!asks.has_module(module()).await.unwrap());
    assert!(
        a.has_module(module()).await.unwrap(),
        "another process's deletion is not seen within the window"
    );
}

/// A busy worker's fetch is one round trip: the fetch script returns the head of the ready set
/// and the worker's next fetch on that queue starts from it instead of reading it first. A head
/// gone stale — another worker took it, a job of higher priority came first — costs a second
/// round, never the order.
#[tokio::test]
async fn a_busy_workers_fetch_is_one_round_trip_and_keeps_priority_order() {
    let server = RedisServer::start();
    let a = RedisBroker::connect(&server.url()).await.unwrap();
    let b = RedisBroker::connect(&server.url()).await.unwrap();
    let jobs: Vec<_> = (0..40).map(|i| job(&format!("j{i:02}"), |_| {})).collect();
    put(&a, &jobs).await;
    let names = |range: std::ops::Range<usize>| -> Vec<String> {
        range.map(|i| format!("j{i:02}")).collect()
    };
    server.log_commands(128);
    assert_eq!(ids(&fetch(&a, 5).await), names(0..5));

    // Each fetch script reads the head once (what it takes and, after it, what it returns): a
    // worker that read the head itself would add a second ZRANGE.
    server.cmd(&["CONFIG", "RESETSTAT"]);
    server.logged();
    assert_eq!(ids(&fetch(&a, 5).await), names(5..10));
    assert_eq!(command_calls(&server, "evalsha"), 1);
    assert_eq!(
        command_calls(&server, "zrange"),
        1,
        "no read before the script"
    );
    // Alone on the queue, a worker declares only the records it takes (each candidate costs
    // Redis two strings and a look-up).
    assert_eq!(fetch_candidates_declared(&server), [5]);

    // Another worker takes what `a` holds as its next candidates: `a` takes none of them, and
    // its second round starts from the head its first returned.
    assert_eq!(ids(&fetch(&b, 10).await), names(10..20));
    server.cmd(&["CONFIG", "RESETSTAT"]);
    server.logged();
    assert_eq!(ids(&fetch(&a, 5).await), names(20..25));
    assert_eq!(command_calls(&server, "evalsha"), 2);
    assert_eq!(command_calls(&server, "zrange"), 2);
    // Outrun, it declares as many again past what it wants (its second round already), so
    // that candidates another worker takes meanwhile do not cost it a second round; each round
    // it is not outrun halves them.
    assert_eq!(fetch_candidates_declared(&server), [5, 10]);
    assert_eq!(ids(&fetch(&a, 4).await), names(25..29));
    assert_eq!(ids(&fetch(&a, 4).await), names(29..33));
    assert_eq!(fetch_candidates_declared(&server), [4 + 2, 4 + 1]);

    // A job of higher priority, which `a`'s candidates do not name, still comes first.
    put(&a, &[job("urgent", |j| j.priority = 10)]).await;
    let mut want = vec!["urgent".to_owned()];
    want.extend(names(33..37));
    assert_eq!(ids(&fetch(&a, 5).await), want);
}

/// A pending job's record holds what a worker needs and nothing it can infer: its attempt and
/// lease counters start absent (0), so every job waiting in a queue is two fields smaller, and
/// its first fetch writes them.
#[tokio::test]
async fn a_pending_jobs_record_leaves_its_counters_out_until_fetched() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    put(&broker, &[job("j", |_| {})]).await;
    let fields = || -> Vec<String> {
        let all: std::collections::BTreeMap<String, String> =
            redis::from_redis_value(server.cmd(&["HGETALL", "wasmq:{default}:job:j"])).unwrap();
        all.into_keys().collect()
    };
    assert_eq!(fields(), ["enq", "inv", "max", "prio", "state"]);
    let record = broker.job(Some("default"), "j").await.unwrap().unwrap();
    assert_eq!(record.attempts, 0);
    let leased = fetch(&broker, 1).await;
    assert_eq!((leased[0].attempt, leased[0].key.token), (1, 1));
    assert!(fields().contains(&"attempts".to_owned()));
    assert_eq!(
        broker
            .job(Some("default"), "j")
            .await
            .unwrap()
            .unwrap()
            .attempts,
        1
    );
}

/// A process that dies between writing a module's bytes and listing them (or between unlisting
/// and deleting them) leaves bytes no index lists. Maintenance deletes them once their operation
/// is older than the operation age and nothing touched them for as long — Redis holds the 4 MiB
/// no more — and leaves alone a listed module's bytes and bytes written a moment ago (an upload
/// of the same module that began again).
#[tokio::test]
async fn module_bytes_a_crash_left_unlisted_are_deleted_by_maintenance() {
    use wasmq::modules::ModuleHash;
    let server = RedisServer::start();
    let listed = ModuleHash::of(b"listed");
    let crashed = ModuleHash::of(b"crashed");
    let blob = "7".repeat(4 << 20);
    let bytes_key = |h: ModuleHash| format!("wasmq:{{module:{}}}:bytes", h.hex());
    let exists = |key: &str| server.cmd(&["EXISTS", key]) == redis::Value::Int(1);
    // What an upload writes before it lists the bytes: its entry (begun at ms 1, long ago), then
    // the bytes.
    let crash_upload = |h: ModuleHash| {
        server.cmd(&[
            "HSET",
            "wasmq:{modules}:ops",
            &h.hex(),
            "1:0123456789abcdef",
        ]);
        server.cmd(&["SET", &bytes_key(h), &blob]);
    };

    // Operations count as dead after an hour: the bytes were written just now, so they stay.
    let patient = RedisBroker::connect(&server.url()).await.unwrap();
    patient.put_module(listed, b"listed").await.unwrap();
    crash_upload(crashed);
    patient.maintain("default", &[]).await.unwrap();
    assert!(
        exists(&bytes_key(crashed)),
        "bytes touched a moment ago are kept"
    );

    // Counted as dead at once: the unlisted bytes go, the listed module's stay.
    let before = server.stored_bytes();
    let sweeper = RedisBroker::connect(&server.url())
        .await
        .unwrap()
        .with_module_op_age(Duration::ZERO);
    sweeper.maintain("default", &[]).await.unwrap();
    let after = server.stored_bytes();
    println!("stored bytes before the sweep {before}, after {after}");
    assert!(!exists(&bytes_key(crashed)), "unlisted bytes deleted");
    assert!(before - after >= 4 << 20, "{before} → {after}");
    assert_eq!(
        server.cmd(&["HLEN", "wasmq:{modules}:ops"]),
        redis::Value::Int(0)
    );
    assert_eq!(
        sweeper.module(listed).await.unwrap().as_deref(),
        Some(&b"listed"[..])
    );

    // A deletion that died between unlisting and deleting: the same.
    let gone = ModuleHash::of(b"deleted");
    let sweeper = RedisBroker::connect(&server.url())
        .await
        .unwrap()
        .with_module_op_age(Duration::ZERO);
    sweeper.put_module(gone, blob.as_bytes()).await.unwrap();
    server.cmd(&[
        "HSET",
        "wasmq:{modules}:ops",
        &gone.hex(),
        "1:fedcba9876543210",
    ]);
    server.cmd(&["HDEL", "wasmq:{modules}:index", &gone.hex()]);
    sweeper.maintain("default", &[]).await.unwrap();
    assert!(!exists(&bytes_key(gone)));
}

/// With `--durable-writes`, each write waits for its replicas on a connection of its own (so
/// one write's `WAIT` does not hold up the rest), and at most 32 such connections are opened:
/// with the replica frozen, 100 writes in flight hold exactly 32 more connections to Redis, and
/// every one of them is applied once it thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_wait_on_at_most_32_connections_of_their_own() {
    let master = RedisServer::start();
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    until("the replica in sync", &|| {
        master.info("replication").contains("connected_slaves:1")
            && replica
                .info("replication")
                .contains("master_link_status:up")
    });
    let broker = Arc::new(
        RedisBroker::connect(&master.url())
            .await
            .unwrap()
            .with_durable_writes(1, Duration::from_secs(120))
            .await
            .unwrap(),
    );
    let clients = || -> u64 {
        let info = master.info("clients");
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("connected_clients")
    };
    // Before any durable write: the broker's own connection, and the one asking.
    let before = clients();
    broker.put_module(module(), b"x").await.unwrap();
    replica.freeze();
    // On a hundred queues: enqueues to one queue at the same moment would go out as one call.
    let writes: Vec<_> = (0..100)
        .map(|i| {
            let b = broker.clone();
            let one = job(&format!("d{i}"), |j| j.queue = format!("q{i}"));
            tokio::spawn(async move { put(b.as_ref(), &[one]).await })
        })
        .collect();
    until("32 connections waiting for the replica", &|| {
        clients() >= before + 32
    });
    // Nothing that runs later opens a 33rd.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(clients(), before + 32);
    replica.thaw();
    for w in writes {
        assert_eq!(w.await.unwrap(), [wasmq::broker::Enqueued::Created]);
    }
    for i in 0..100 {
        let q = format!("q{i}");
        let record = broker.job(Some(&q), &format!("d{i}")).await.unwrap();
        assert_eq!(record.map(|r| r.state), Some(wasmq::job::JobState::Ready));
    }
}

/// The enqueue script refuses what would break a worker, for writers that skip the CLI.
#[tokio::test]
async fn the_enqueue_script_checks_direct_writers() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(include_str!("../../docs/redis-enqueue.lua"));
    let keys = wasmq::broker::redis::Keys::new("wasmq").queue("default");
    let good = serde_json::json!({"module": module()}).to_string();
    let call = |id: &str, inv: &str, prio: &str, max: &str| {
        let mut i = script.prepare_invoke();
        for k in &keys.keys {
            i.key(k);
        }
        i.arg(&keys.job_prefix).arg(&keys.done_prefix).arg(1);
        i.arg(id).arg(inv).arg(prio).arg(max).arg(0);
        i
    };
    let cases = [
        (
            call("a", "not json", "0", "5"),
            "invocation is not a JSON object",
        ),
        (
            call("a", r#"{"module":"sha256:AB"}"#, "0", "5"),
            "`module` must be",
        ),
        (call("a", &good, "101", "5"), "priority must be"),
        (call("a", &good, "0", "0"), "max attempts must be"),
        (call("a b", &good, "0", "5"), "id must be"),
    ];
    for (inv, want) in cases {
        let err = inv
            .invoke_async::<Vec<u8>>(&mut conn)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
    }
    let created: Vec<u8> = call("ok", &good, "0", "5")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(created, [1]);

    // With the job's record key declared (what a cluster needs), and refused with any other
    // number of record keys than jobs.
    let declared = |id: &str, records: &[String]| {
        let mut i = call(id, &good, "0", "5");
        for k in records {
            i.key(k);
        }
        i
    };
    let record = |id: &str| wasmq::broker::redis::Keys::new("wasmq").job("default", id);
    let created: Vec<u8> = declared("declared", &[record("declared")])
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(created, [1]);
    let err = declared("two-keys", &[record("two-keys"), record("other")])
        .invoke_async::<Vec<u8>>(&mut conn)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("one record key per job (1 jobs, 2 record keys)"),
        "{err}"
    );

    // Args at the hard ceiling go in; an invocation one byte longer than the ceiling and the
    // room for the other fields is refused, and Redis keeps nothing of it.
    let with_args = |len: usize| {
        // `"` + text + `"`: the args' JSON is `len` bytes.
        serde_json::json!({"module": module(), "args": "x".repeat(len - 2)}).to_string()
    };
    let before = server.stored_bytes();
    let limit = wasmq::job::MAX_ARGS_BYTES + wasmq::job::INVOCATION_OVERHEAD_BYTES;
    let mut big = with_args(wasmq::job::MAX_ARGS_BYTES);
    big.insert_str(1, &" ".repeat(limit + 1 - big.len()));
    assert_eq!(big.len(), limit + 1);
    for i in 0..20 {
        let err = call(&format!("too-big-{i}"), &big, "0", "5")
            .invoke_async::<Vec<u8>>(&mut conn)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("above the limit of 1052672"),
            "refusal names the limit: {err}"
        );
    }
    let grew = server.stored_bytes().saturating_sub(before);
    assert!(grew < 4 << 10, "20 refused invocations left {grew} bytes");
    let before = server.stored_bytes();
    let fits = with_args(wasmq::job::MAX_ARGS_BYTES);
    let created: Vec<u8> = call("at-limit", &fits, "0", "5")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(created, [1]);
    let grew = server.stored_bytes().saturating_sub(before);
    // jemalloc keeps a 1 MiB value in its 1.25 MiB size class.
    assert!(
        (1 << 20..3 << 19).contains(&grew),
        "an accepted 1 MiB job grew Redis by {grew} bytes"
    );
}

/// The intake refuses a job whose module was never uploaded, and the broker then holds nothing of
/// it (the memory broker's case is in the intake's own tests).
#[tokio::test]
async fn unknown_modules_are_refused_before_redis_holds_anything() {
    let store = Redis::Server(RedisServer::start());
    let b = store.broker(Duration::from_secs(60)).await;
    let err = common::enqueue(b.as_ref(), &[job("a", |_| {})])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("was never uploaded"), "{err}");
    assert!(b.job(None, "a").await.unwrap().is_none());
    assert!(b.queues().await.unwrap().is_empty(), "no queue was touched");
}
