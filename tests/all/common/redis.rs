//! A private `redis-server` per test: a free port, its own directory, append-only file on with an
//! fsync per write (so a SIGKILLed server loses nothing acknowledged), stopped by pid on drop.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped, between `kill` and `start`) test Redis.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Settings given to every start beyond the defaults here.
    extra: Vec<String>,
    /// On a TLS server: the PEM of the authority that signed its certificate.
    ca: Option<Vec<u8>>,
    /// On a TLS cluster node: the port clients reach it on with TLS (`port` stays plain, for the
    /// test's own administration and the cluster bus).
    tls_port: Option<u16>,
}

/// A certificate authority made for a test and a certificate for 127.0.0.1 it signed
/// (`openssl`), in a directory of their own.
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// Makes the authority and the server certificate.
    pub fn make() -> Self {
        let certs = tempfile::tempdir().expect("a temp dir");
        let dir = certs.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl runs (.ci/run installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=wasmq test CA",
        ]);
        openssl(&[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        TestCa { dir: certs }
    }

    /// The authority's certificate (PEM).
    pub fn pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.pem")).expect("the CA's certificate")
    }

    /// The server settings that make `redis-server` speak TLS on `tls_port` with the
    /// certificate (clients are not asked for one).
    pub fn server_settings(&self, tls_port: u16) -> Vec<String> {
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            file("server.pem"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server on a free port with `extra` settings (`["--maxmemory-policy", "…"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// Starts a Redis Cluster node with `extra` settings: on a free port whose cluster bus port
    /// (the port + 10000) is free too.
    pub fn start_cluster_node(extra: &[&str]) -> Self {
        // Another test may take a port between the check and the start: then another port.
        for _ in 0..20 {
            let port = fastrand::u16(1024..55535);
            let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
            if !free(port) || !free(port + 10000) {
                continue;
            }
            // The bus port named outright: on a TLS cluster it would follow the TLS port.
            let bus = (port + 10000).to_string();
            let mut settings = vec!["--cluster-port", bus.as_str()];
            settings.extend_from_slice(extra);
            let started = std::panic::catch_unwind(|| Self::start_on(port, &settings));
            if let Ok(server) = started {
                return server;
            }
        }
        panic!("no cluster node started on 20 free-looking ports");
    }

    fn start_on(port: u16, extra: &[&str]) -> Self {
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("a temp dir"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            ca: None,
            tls_port: None,
        };
        server.restart();
        server
    }

    /// Starts a server that speaks only TLS, with a certificate for 127.0.0.1 signed by a
    /// certificate authority made for it (`openssl`); its PEM is [`Self::ca_pem`]. `extra` as in
    /// [`Self::start_with`].
    pub fn start_tls(extra: &[&str]) -> Self {
        let ca = TestCa::make();
        let port = free_port();
        let mut settings = vec!["--port".to_owned(), "0".to_owned()];
        settings.extend(ca.server_settings(port));
        settings.extend(extra.iter().map(|s| (*s).to_owned()));
        let pem = ca.pem();
        let mut server = RedisServer {
            child: None,
            port,
            dir: ca.dir,
            extra: settings,
            ca: Some(pem),
            tls_port: None,
        };
        server.restart();
        server
    }

    /// Starts a Redis Cluster node (as [`Self::start_cluster_node`]) that also speaks TLS, with
    /// `ca`'s certificate, to clients, to its replicas and on the cluster bus; the plain port
    /// stays open for the test's own administration. [`Self::url`] is its TLS address.
    pub fn start_tls_cluster_node(extra: &[&str], ca: &TestCa) -> Self {
        let tls_port = free_port();
        let mut settings: Vec<String> = ca.server_settings(tls_port);
        settings.extend(
            ["--tls-cluster", "yes", "--tls-replication", "yes"]
                .iter()
                .chain(extra)
                .map(|s| (*s).to_owned()),
        );
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        let mut node = Self::start_cluster_node(&settings);
        node.ca = Some(ca.pem());
        node.tls_port = Some(tls_port);
        node
    }

    /// The PEM of the authority that signed a TLS server's certificate.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca.as_deref()
    }

    /// `redis://127.0.0.1:<port>/` (`rediss://` and its TLS port on a TLS server).
    pub fn url(&self) -> String {
        match (self.tls_port, &self.ca) {
            (Some(tls), _) => format!("rediss://127.0.0.1:{tls}/"),
            (None, Some(_)) => format!("rediss://127.0.0.1:{}/", self.port),
            (None, None) => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// SIGKILLs the server (no chance to save anything beyond what the AOF already holds).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): its clients and peers see it stop answering.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts the server again on the same port and directory (after `kill`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .args(["--logfile", "redis.log", "--daemonize", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("failed to start `redis-server`: is it installed? (.ci/run installs it with apt-get)");
        self.child = Some(child);
        if let Err(why) = self.wait_started() {
            self.kill();
            panic!("redis-server did not start on port {}: {why}", self.port);
        }
    }

    /// Waits until the server accepts connections, or says why it never will.
    fn wait_started(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let child = self.child.as_mut().expect("started");
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                let last = log.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
                return Err(format!("it exited ({status}): {last}"));
            }
            if Instant::now() > deadline {
                return Err("not listening after 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it was started and not killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Makes the server log every command it runs, scripts' own included (`SLOWLOG`, the
    /// latest `max`), for [`Self::logged`].
    pub fn log_commands(&self, max: usize) {
        self.cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
        self.cmd(&["CONFIG", "SET", "slowlog-max-len", &max.to_string()]);
        self.cmd(&["SLOWLOG", "RESET"]);
    }

    /// The commands run since logging began or the last call, oldest first: each one's
    /// arguments, and whether a script sent it. The log starts over.
    pub fn logged(&self) -> Vec<Logged> {
        let log: Vec<redis::Value> =
            redis::from_redis_value(self.cmd(&["SLOWLOG", "GET", "-1"])).unwrap();
        let mut logged: Vec<Logged> = log
            .into_iter()
            .filter_map(|entry| {
                let redis::Value::Array(fields) = entry else {
                    return None;
                };
                let args = redis::from_redis_value(fields.get(3)?.clone()).ok()?;
                let client: String = redis::from_redis_value(fields.get(4)?.clone()).ok()?;
                Some(Logged {
                    args,
                    by_script: client == "?:0",
                })
            })
            .collect();
        logged.reverse();
        self.cmd(&["SLOWLOG", "RESET"]);
        logged
    }

    /// Runs a command with a fresh connection.
    pub fn cmd(&self, args: &[&str]) -> redis::Value {
        self.query(args)
            .unwrap_or_else(|e| panic!("`{}` failed: {e}", args.join(" ")))
    }

    /// Runs a command with a fresh connection; `None` when it fails.
    pub fn try_cmd(&self, args: &[&str]) -> Option<redis::Value> {
        self.query(args).ok()
    }

    fn query(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = self.client()?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(10))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }

    /// A client for `url` that trusts this server's certificate authority on TLS.
    pub fn client_for(&self, url: &str) -> redis::RedisResult<redis::Client> {
        match &self.ca {
            Some(ca) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(url),
        }
    }

    /// A client for the test's own commands: the plain port where there is one.
    fn client(&self) -> redis::RedisResult<redis::Client> {
        match self.tls_port {
            Some(_) => redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)),
            None => self.client_for(&self.url()),
        }
    }

    /// Bytes Redis holds in keys: `MEMORY USAGE` summed over every key. Unlike `used_memory`
    /// it leaves out client buffers and the Lua heap, which hold the last request's arguments
    /// until a garbage collection whether or not anything was stored, so it measures exactly
    /// what a request left behind.
    pub fn stored_bytes(&self) -> u64 {
        let client = self.client().expect("a valid url");
        let mut conn = client.get_connection().expect("a connection");
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
        keys.iter()
            .map(|k| {
                redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(k)
                    .arg("SAMPLES")
                    .arg(0)
                    .query::<Option<u64>>(&mut conn)
                    .unwrap()
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// A loopback port free when asked.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A command the server ran, from its log ([`RedisServer::logged`]).
pub struct Logged {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// Sent by a script (`redis.call`), not by a client.
    pub by_script: bool,
}
