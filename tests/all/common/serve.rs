//! A live `wasmq serve` on a free port with its own Redis, for the tests that drive it from
//! outside (the clients, the dashboard in a browser).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use super::rig::{Process, Rig};

/// An admin token the server accepts.
pub const ADMIN: &str = "admin-secret-0123456789";
/// A token with the `enqueue` scope only.
pub const ENQUEUER: &str = "enqueue-secret-0123456789";

/// A [`Rig`] (Redis, directory, the CLI), and `wasmq serve --workers N` on a free port.
pub struct Server {
    /// The server's Redis and directory (which holds the token file), and the CLI against them.
    pub rig: Rig,
    _serve: Process,
    /// `http://127.0.0.1:port`.
    pub url: String,
}

impl Server {
    /// Starts Redis and `wasmq serve` with an in-process worker running `workers` jobs at once
    /// (0: none); returns once it listens.
    pub fn start(workers: usize) -> Self {
        Self::start_with(workers, &[])
    }

    /// [`Server::start`] with `extra` flags for `wasmq`.
    pub fn start_with(workers: usize, extra: &[&str]) -> Self {
        let rig = Rig::new();
        let tokens = rig.dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!("ops:{ADMIN}:admin\nci:{ENQUEUER}:enqueue\n"),
        )
        .unwrap();
        let mut child = super::wasmq_cmd(&rig.url(), rig.dir.path())
            .args(extra)
            .args(["serve", "--listen", "127.0.0.1:0", "--workers"])
            .arg(workers.to_string())
            .arg("--tokens-file")
            .arg(&tokens)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("wasmq serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from wasmq serve: {line:?}"))
            .to_owned();
        Server {
            rig,
            _serve: Process::from(child),
            url,
        }
    }
}

impl Server {
    /// The server's process (for its peak memory).
    pub fn process(&self) -> &Process {
        &self._serve
    }

    /// One HTTP/1.1 request on a fresh connection; the status and the body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        use std::io::{Read as _, Write as _};
        let addr = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_owned());
        (status, body)
    }
}

/// Whether `program` is on PATH.
pub fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
