//! A private Redis Cluster per test: masters and their replicas, each a `redis-server` of its own
//! ([`RedisServer`]: a free loopback port, its own directory, append-only file with an fsync per
//! write), joined and given the 16384 slots by `wasmq::cli::private_redis::form_cluster`, stopped by
//! pid on drop.

use std::time::{Duration, Instant};

use super::redis::{RedisServer, TestCa};

/// How long a master may be unreachable before its replica takes over. Short, so a failover
/// test waits seconds; long enough that a busy machine does not fail over on its own.
const NODE_TIMEOUT_MS: u64 = 3000;

/// A running test cluster.
pub struct RedisCluster {
    /// Masters first (`masters` of them, slots split evenly in order), then replicas.
    pub nodes: Vec<RedisServer>,
    masters: usize,
    /// On a TLS cluster: the authority its nodes' certificate is signed by.
    ca: Option<TestCa>,
}

impl RedisCluster {
    /// Three masters, each with one replica.
    pub fn start() -> Self {
        Self::start_with(3, 1)
    }

    /// `masters` masters with `replicas` replicas each; returns once every node agrees the
    /// cluster is up and every replica is in sync with its master.
    pub fn start_with(masters: usize, replicas: usize) -> Self {
        Self::start_nodes(masters, replicas, None)
    }

    /// As [`Self::start_with`], every node speaking TLS (to clients, replicas and on the
    /// cluster bus) with a certificate from an authority made for the test
    /// ([`Self::ca_pem`]); [`Self::url`] lists the TLS addresses.
    pub fn start_tls(masters: usize, replicas: usize) -> Self {
        Self::start_nodes(masters, replicas, Some(TestCa::make()))
    }

    /// The PEM of the authority that signed a TLS cluster's certificate.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        self.ca.as_ref().map(TestCa::pem)
    }

    fn start_nodes(masters: usize, replicas: usize, ca: Option<TestCa>) -> Self {
        let timeout = NODE_TIMEOUT_MS.to_string();
        let settings = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &timeout,
            // A replica whose master is gone takes over however long the link was down.
            "--cluster-replica-validity-factor",
            "0",
            // Replicas sync at once (the default waits 5 s for more replicas to share a transfer).
            "--repl-diskless-sync-delay",
            "0",
        ];
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| match &ca {
                Some(ca) => RedisServer::start_tls_cluster_node(&settings, ca),
                None => RedisServer::start_cluster_node(&settings),
            })
            .collect();
        let ports: Vec<u16> = nodes.iter().map(RedisServer::port).collect();
        wasmq::cli::private_redis::form_cluster(&ports, masters).expect("the cluster forms");
        RedisCluster { nodes, masters, ca }
    }

    /// The masters as started (after a failover one of them may be a replica or gone).
    pub fn masters(&self) -> &[RedisServer] {
        &self.nodes[..self.masters]
    }

    /// Every master's URL, comma-separated: what `--redis` takes for a cluster.
    pub fn url(&self) -> String {
        self.masters()
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every running node reports `cluster_state:ok` and every replica's link to its
    /// master is up.
    pub fn wait_healthy(&self) {
        self.wait("the cluster to be up with every replica in sync", |c| {
            c.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let ok = n.cluster_info().contains("cluster_state:ok");
                let replication = n.info("replication");
                let linked = !replication.contains("role:slave")
                    || replication.contains("master_link_status:up");
                ok && linked
            })
        });
    }

    /// The node that serves `key`'s slot now (asked of the first running node).
    pub fn owner_of(&self, key: &str) -> &RedisServer {
        let asker = self.nodes.iter().find(|n| n.is_running()).expect("a node");
        let slot: i64 =
            redis::from_redis_value(asker.cmd(&["CLUSTER", "KEYSLOT", key])).expect("a slot");
        let slots = asker.cmd(&["CLUSTER", "SLOTS"]);
        let ranges: Vec<(i64, i64, (String, u16))> =
            redis::from_redis_value(strip_ids(slots)).expect("CLUSTER SLOTS");
        let port = ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, (_, port))| *port)
            .expect("every slot is served");
        &self.nodes[self.index_of(port)]
    }

    /// Waits until `key`'s slot is served by a node other than the one on `old_port` (a
    /// replica took over), then until the cluster is healthy.
    pub fn wait_failover(&self, key: &str, old_port: u16) {
        self.wait("a replica to take over", |c| {
            c.owner_of(key).port() != old_port
        });
        self.wait_healthy();
    }

    /// Where the node listening on `port` is in [`Self::nodes`].
    pub fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .expect("a node of this cluster")
    }

    /// The running replica of the node listening on `port`.
    pub fn replica_of(&self, port: u16) -> &RedisServer {
        let want = format!("master_port:{port}");
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .find(|n| n.info("replication").lines().any(|l| l.trim() == want))
            .expect("a replica of that master")
    }

    fn wait(&self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        // Generous: gossip between six processes on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `CLUSTER SLOTS` rows cut to (first, last, (host, port)) of the master.
fn strip_ids(slots: redis::Value) -> redis::Value {
    use redis::Value;
    let Value::Array(rows) = slots else {
        return slots;
    };
    Value::Array(
        rows.into_iter()
            .map(|row| match row {
                Value::Array(mut fields) => {
                    fields.truncate(3);
                    if let Some(Value::Array(master)) = fields.get_mut(2) {
                        master.truncate(2);
                    }
                    Value::Array(fields)
                }
                other => other,
            })
            .collect(),
    )
}

impl RedisServer {
    /// `CLUSTER INFO`.
    pub fn cluster_info(&self) -> String {
        self.try_cmd(&["CLUSTER", "INFO"])
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default()
    }

    /// An `INFO` section.
    pub fn info(&self, section: &str) -> String {
        self.try_cmd(&["INFO", section])
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default()
    }
}
