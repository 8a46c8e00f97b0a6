//! Private Redis servers and clusters for the benchmarks: each a `redis-server` on a free
//! loopback port with its own directory, killed on drop; a cluster joined and given its slots by
//! [`form_cluster`] (which the tests' own cluster harness uses too), and the Redis CPU a server
//! has spent ([`RedisCpu`]) for per-job figures.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A private `redis-server`, killed on drop.
pub struct PrivateRedis {
    child: Child,
    _dir: tempfile::TempDir,
    /// Where it listens.
    pub port: u16,
    /// `redis://127.0.0.1:<port>/`.
    pub url: String,
}

impl PrivateRedis {
    /// Starts one on a free loopback port (append-only file on, fsync every second: Redis's
    /// recommended durable setting).
    pub fn start() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_on(port, &[])
    }

    /// Starts a replica of the server on `master`'s port, and waits until it is in sync.
    pub fn start_replica_of(master: u16) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let master = master.to_string();
        let replica = Self::start_on(
            port,
            &[
                "--replicaof",
                "127.0.0.1",
                &master,
                "--repl-diskless-sync-delay",
                "0",
            ],
        )?;
        wait("the replica to sync", || {
            node_text(port, &["INFO", "replication"]).contains("master_link_status:up")
        })?;
        Ok(replica)
    }

    /// Starts a Redis Cluster node on a free port whose cluster bus port (+10000) is free too.
    pub fn start_cluster_node() -> anyhow::Result<Self> {
        let settings = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--repl-diskless-sync-delay",
            "0",
        ];
        for _ in 0..20 {
            let port = fastrand::u16(1024..55535);
            let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
            if free(port) && free(port + 10000) {
                match Self::start_on(port, &settings) {
                    Ok(node) => return Ok(node),
                    Err(e) => tracing::debug!(error = %e, port, "cluster node did not start"),
                }
            }
        }
        anyhow::bail!("no cluster node started on 20 free-looking ports")
    }

    fn start_on(port: u16, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .context("failed to start `redis-server` (install it, or pass `--use-redis`)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("redis-server on port {port} exited: {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(PrivateRedis {
            child,
            _dir: dir,
            port,
            url: format!("redis://127.0.0.1:{port}/"),
        })
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Redis Cluster: masters first, then their replicas.
pub struct PrivateCluster {
    /// Every node.
    pub nodes: Vec<PrivateRedis>,
    masters: usize,
}

impl PrivateCluster {
    /// `masters` masters with `replicas` replicas each, joined and healthy.
    pub fn start(masters: usize, replicas: usize) -> anyhow::Result<Self> {
        let nodes = (0..masters * (1 + replicas))
            .map(|_| PrivateRedis::start_cluster_node())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        form_cluster(&ports, masters)?;
        Ok(PrivateCluster { nodes, masters })
    }

    /// The masters.
    pub fn masters(&self) -> &[PrivateRedis] {
        &self.nodes[..self.masters]
    }

    /// Every master's URL, comma-separated.
    pub fn url(&self) -> String {
        self.masters()
            .iter()
            .map(|n| n.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Runs one command on the node at `port`.
fn node_cmd(port: u16, args: &[&str]) -> anyhow::Result<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(10))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn)
        .with_context(|| format!("`{}` on port {port}", args.join(" ")))
}

fn node_text(port: u16, args: &[&str]) -> String {
    node_cmd(port, args)
        .ok()
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or_default()
}

/// Makes a cluster of the fresh cluster-enabled nodes on `ports`: the first `masters` share the
/// 16384 slots evenly, in order; the rest become their replicas in turn. Returns once every node
/// agrees the cluster is up and every replica is in sync.
pub fn form_cluster(ports: &[u16], masters: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        masters > 0 && ports.len() >= masters,
        "a cluster needs masters"
    );
    for (i, &port) in ports[..masters].iter().enumerate() {
        let first = (16384 * i / masters).to_string();
        let last = (16384 * (i + 1) / masters - 1).to_string();
        node_cmd(port, &["CLUSTER", "ADDSLOTSRANGE", &first, &last])?;
    }
    let seed = ports[0].to_string();
    for &port in &ports[1..] {
        node_cmd(port, &["CLUSTER", "MEET", "127.0.0.1", &seed])?;
    }
    let known = format!("cluster_known_nodes:{}", ports.len());
    wait("every node to know every other", || {
        ports.iter().all(|&p| {
            node_text(p, &["CLUSTER", "INFO"])
                .lines()
                .any(|l| l.trim() == known)
        })
    })?;
    for (i, &port) in ports[masters..].iter().enumerate() {
        let master: String =
            redis::from_redis_value(node_cmd(ports[i % masters], &["CLUSTER", "MYID"])?)?;
        node_cmd(port, &["CLUSTER", "REPLICATE", &master])?;
    }
    wait("the cluster to be up with every replica in sync", || {
        ports.iter().all(|&p| {
            let ok = node_text(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok");
            let replication = node_text(p, &["INFO", "replication"]);
            ok && (!replication.contains("role:slave")
                || replication.contains("master_link_status:up"))
        })
    })
}

fn wait(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// What a Redis server has spent: CPU seconds (user + system, every thread) and, per command,
/// calls and microseconds (`INFO commandstats`).
#[derive(Clone, Debug, Default)]
pub struct RedisCpu {
    /// CPU seconds.
    pub cpu_s: f64,
    /// Command → (calls, µs).
    pub commands: HashMap<String, (u64, u64)>,
    /// Forks so far (an AOF rewrite or an RDB save): the fork and the pages copied after it
    /// are Redis CPU that no command accounts for.
    pub forks: u64,
    /// Reads from clients so far: Redis reads every command that has arrived in one go, so
    /// fewer reads than calls means calls shared round trips.
    pub reads: u64,
}

impl RedisCpu {
    /// The figures of the server on `port` now.
    pub fn read(port: u16) -> anyhow::Result<Self> {
        let cpu = node_text(port, &["INFO", "cpu"]);
        let field = |name: &str| -> f64 {
            cpu.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let mut commands = HashMap::new();
        for line in node_text(port, &["INFO", "commandstats"]).lines() {
            // cmdstat_get:calls=1,usec=2,usec_per_call=2.00,…
            let Some((name, stats)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let get = |key: &str| -> u64 {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            commands.insert(name.to_owned(), (get("calls"), get("usec")));
        }
        let stats = node_text(port, &["INFO", "stats"]);
        let stat = |name: &str| -> u64 {
            stats
                .lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':')?.parse().ok())
                .unwrap_or(0)
        };
        let (forks, reads) = (stat("total_forks"), stat("total_reads_processed"));
        Ok(RedisCpu {
            cpu_s: field("used_cpu_user") + field("used_cpu_sys"),
            commands,
            forks,
            reads,
        })
    }

    /// What was spent between `earlier` and this reading.
    pub fn since(&self, earlier: &RedisCpu) -> RedisCpu {
        let commands = self
            .commands
            .iter()
            .map(|(name, &(calls, usec))| {
                let (c0, u0) = earlier.commands.get(name).copied().unwrap_or((0, 0));
                (
                    name.clone(),
                    (calls.saturating_sub(c0), usec.saturating_sub(u0)),
                )
            })
            .filter(|(_, (calls, _))| *calls > 0)
            .collect();
        RedisCpu {
            cpu_s: self.cpu_s - earlier.cpu_s,
            commands,
            forks: self.forks.saturating_sub(earlier.forks),
            reads: self.reads.saturating_sub(earlier.reads),
        }
    }

    /// Microseconds spent in commands, in all.
    pub fn command_us(&self) -> u64 {
        self.commands.values().map(|(_, usec)| usec).sum()
    }

    /// Command calls, in all.
    pub fn calls(&self) -> u64 {
        self.commands.values().map(|(calls, _)| calls).sum()
    }
}
