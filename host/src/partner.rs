//! A partner API and sink on loopback — what a job that fetches, cleans and stores data talks
//! to, for the demo, `bench io` and the tests: it serves pages of records (`/records?page=n`,
//! optionally `&delay_ms=`), redirects, large and slow bodies, answers held until `n` requests
//! wait together (`/gather?n=`), takes POSTed records at `/sink`
//! (with a bearer token), and counts what it saw — every request and its Host header, when each
//! arrived, the most in flight at once, the records stored.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

/// What the server saw.
#[derive(Default)]
pub struct Seen {
    requests: AtomicU64,
    in_flight: AtomicU64,
    peak: AtomicU64,
    /// (path and query, Host header).
    log: Mutex<Vec<(String, String)>>,
    /// Requests gathered at `/gather` so far (each waits until `n` have come).
    gathered: tokio::sync::watch::Sender<u64>,
    /// Records stored through `/sink`, and the `Authorization` header of each POST.
    sunk: Mutex<(u64, Vec<String>)>,
    /// When each request arrived.
    starts: Mutex<Vec<Instant>>,
}

/// The running server; stops with the test's runtime.
pub struct Partner {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Partner {
    /// Starts it on a free loopback port, serving on the current tokio runtime.
    pub async fn start() -> std::io::Result<Partner> {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/records", get(records))
            .route("/redirect", get(redirect))
            .route("/big", get(big))
            .route("/slow", get(slow))
            .route("/sink", post(sink))
            .route("/gather", get(gather))
            .fallback(any(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(seen.clone(), count))
            .with_state(seen.clone());
        // A backlog of the kernel's usual `somaxconn` rather than tokio's 1,024: ten thousand
        // jobs connecting at once (`bench io`) would otherwise overflow it, and each dropped
        // SYN costs its client a one-second retransmit.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(([127, 0, 0, 1], 0).into())?;
        let listener = socket.listen(4096)?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Partner { addr, seen })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// Requests seen so far.
    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// The most requests in flight at once.
    pub fn peak(&self) -> u64 {
        self.seen.peak.load(Ordering::SeqCst)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.seen.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that arrived within any `window` (sliding).
    pub fn most_started_within(&self, window: Duration) -> usize {
        let mut starts = self.seen.starts.lock().unwrap().clone();
        starts.sort();
        (0..starts.len())
            .map(|i| {
                starts[i..]
                    .iter()
                    .take_while(|t| t.duration_since(starts[i]) < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// When each request arrived, in order of arrival.
    pub fn arrivals(&self) -> Vec<Instant> {
        let mut starts = self.seen.starts.lock().unwrap().clone();
        starts.sort();
        starts
    }

    /// Records stored through `/sink`, and the `Authorization` headers the POSTs carried.
    pub fn sunk(&self) -> (u64, Vec<String>) {
        self.seen.sunk.lock().unwrap().clone()
    }

    /// (path and query, Host header) of every request, in order.
    pub fn log(&self) -> Vec<(String, String)> {
        self.seen.log.lock().unwrap().clone()
    }
}

async fn count(
    State(seen): State<Arc<Seen>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    seen.starts.lock().unwrap().push(Instant::now());
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.peak.fetch_max(now, Ordering::SeqCst);
    // Counted out when the request ends, or when its client goes away mid-request.
    let _out = InFlight(seen.clone());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    seen.log.lock().unwrap().push((path, host));
    next.run(req).await
}

struct InFlight(Arc<Seen>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Deserialize)]
struct Page {
    page: u32,
    #[serde(default)]
    delay_ms: u64,
}

/// Five records per page, in a partner's untidy shape: names with stray spaces and mixed
/// case, emails in capitals, amounts as strings; one record per page has no email.
async fn records(Query(p): Query<Page>) -> Response {
    tokio::time::sleep(Duration::from_millis(p.delay_ms)).await;
    let records: Vec<Value> = (0..5)
        .map(|i| {
            let n = p.page * 5 + i;
            if i == 4 {
                json!({ "id": n, "name": format!("  no MAIL {n} "), "amount": "1.50" })
            } else {
                json!({
                    "id": n,
                    "name": format!("  ada LOVELACE {n} "),
                    "email": format!("Ada{n}@Example.COM"),
                    "amount": format!("{}.25", n),
                })
            }
        })
        .collect();
    axum::Json(records).into_response()
}

#[derive(Deserialize)]
struct To {
    to: String,
}

async fn redirect(Query(t): Query<To>) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, t.to)]).into_response()
}

#[derive(Deserialize)]
struct Size {
    bytes: usize,
}

async fn big(Query(s): Query<Size>) -> Response {
    Body::from(vec![b'x'; s.bytes]).into_response()
}

#[derive(Deserialize)]
struct Gather {
    n: u64,
}

/// Answers only once `n` requests are waiting here together: a client that cannot hold `n`
/// requests open at once never gets an answer.
async fn gather(State(seen): State<Arc<Seen>>, Query(g): Query<Gather>) -> &'static str {
    seen.gathered.send_modify(|n| *n += 1);
    let mut watch = seen.gathered.subscribe();
    let _ = watch.wait_for(|n| *n >= g.n).await;
    "gathered"
}

#[derive(Deserialize)]
struct Delay {
    ms: u64,
}

async fn slow(Query(d): Query<Delay>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(d.ms)).await;
    "slow"
}

async fn sink(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let stored = value.as_array().map_or(0, Vec::len);
    let Some(auth) = auth else {
        return (StatusCode::UNAUTHORIZED, "no bearer token").into_response();
    };
    let mut sunk = seen.sunk.lock().unwrap();
    sunk.0 += stored as u64;
    sunk.1.push(auth);
    (StatusCode::CREATED, axum::Json(json!({ "stored": stored }))).into_response()
}
