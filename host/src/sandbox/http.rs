//! A guest's outbound HTTP (`wasi:http/outgoing-handler`): linked for every module, and every
//! request checked against the module's [`Grant`] before anything leaves the host.
//!
//! The check is on the request actually sent: its scheme, host and port (and its `Host` header,
//! which must name the same authority), then each address the host name resolves to — an address
//! that is not public is used only when the grant names it or its range, so a granted name cannot
//! be pointed at the worker's own network (SSRF, DNS rebinding: the host connects to the address
//! it checked, never resolving twice). Redirects are not followed here: a guest that follows one
//! makes a new request, checked like the first. A refused request fails with
//! `HTTP-request-denied`, and a warning naming the refused authority goes into the job's log.
//!
//! Each call has a connect and a first-byte timeout and a cap on the bytes sent and received;
//! all of it happens inside the job's deadline (the run's timeout drops the store and with it
//! every request in flight). A guest waiting on a response is a parked future: no thread, no fuel.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::{EgressGate, EgressPermit};
use crate::grant::{Grant, Scheme, canonical_host};
use crate::job::{HttpUse, LogLevel, LogRecord};

/// The operator's limits on each outbound call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest wait to resolve the name and open the connection (TLS included).
    pub connect_timeout: Duration,
    /// Longest wait, once the request is sent, for the response to begin.
    pub first_byte_timeout: Duration,
    /// Most bytes a request body may carry.
    pub max_request_body: u64,
    /// Most bytes a response body may carry; past it the body ends with an error.
    pub max_response_body: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(60),
            max_request_body: 16 << 20,
            max_response_body: 16 << 20,
        }
    }
}

/// Most destinations one run's report lists; calls to further ones are counted under `other`.
const MAX_DESTINATIONS: usize = 32;

/// Most denials written into one run's log (the rest are counted in the last one).
const MAX_DENIALS_LOGGED: u64 = 16;

/// What one run's outbound HTTP may do and what it did: the `wasi:http` hooks of its store.
pub(super) struct Egress {
    grant: Arc<Grant>,
    limits: HttpLimits,
    record: Arc<Mutex<Record>>,
    started: Instant,
    gate: Arc<dyn EgressGate>,
}

/// What a run's requests did, shared with the requests' own tasks.
#[derive(Default)]
struct Record {
    destinations: BTreeMap<String, Arc<Counters>>,
    denials: Vec<LogRecord>,
    denied: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    wait_us: AtomicU64,
}

impl Egress {
    pub(super) fn new(
        grant: Arc<Grant>,
        limits: HttpLimits,
        started: Instant,
        gate: Arc<dyn EgressGate>,
    ) -> Self {
        Egress {
            grant,
            limits,
            record: Arc::default(),
            started,
            gate,
        }
    }

    /// What the run's requests did, per destination, and the warnings for refused ones.
    pub(super) fn finish(&self) -> (Vec<HttpUse>, Vec<LogRecord>) {
        let record = self.record.lock().expect("egress record poisoned");
        let uses = record
            .destinations
            .iter()
            .map(|(destination, c)| HttpUse {
                destination: destination.clone(),
                calls: c.calls.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                bytes_sent: c.sent.load(Ordering::Relaxed),
                bytes_received: c.received.load(Ordering::Relaxed),
                wait_ms: c.wait_us.load(Ordering::Relaxed) / 1000,
            })
            .collect();
        let mut denials = record.denials.clone();
        if record.denied > MAX_DENIALS_LOGGED
            && let Some(last) = denials.last_mut()
        {
            last.message.push_str(&format!(
                " ({} more requests were denied in this run)",
                record.denied - MAX_DENIALS_LOGGED
            ));
        }
        (uses, denials)
    }

    fn deny(record: &Mutex<Record>, started: Instant, why: String) -> Error {
        tracing::warn!("outbound HTTP denied: {why}");
        let mut record = record.lock().expect("egress record poisoned");
        record.denied += 1;
        if record.denied <= MAX_DENIALS_LOGGED {
            record.denials.push(LogRecord {
                level: LogLevel::Warn,
                message: format!("HTTP request denied: {why}"),
                at_ms: started.elapsed().as_millis() as u64,
            });
        }
        Error::HttpRequestDenied
    }

    fn counters(&self, destination: String) -> Arc<Counters> {
        let mut record = self.record.lock().expect("egress record poisoned");
        let key = if record.destinations.len() >= MAX_DESTINATIONS
            && !record.destinations.contains_key(&destination)
        {
            "other".to_owned()
        } else {
            destination
        };
        record.destinations.entry(key).or_default().clone()
    }

    /// Checks the request against the grant, before any address is known.
    fn check(&self, request: &http::Request<WasiBody>) -> Result<Target, String> {
        let uri = request.uri();
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            other => {
                return Err(format!(
                    "scheme `{}` is not http or https",
                    other.unwrap_or("")
                ));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| "the request names no host".to_owned())?;
        let host = canonical_host(authority.host());
        let port = authority.port_u16().unwrap_or(scheme.default_port());
        let shown = format!("{}://{}:{port}", scheme.as_str(), authority.host());
        if let Some(header) = request.headers().get(http::header::HOST) {
            let named = header.to_str().unwrap_or("");
            if !same_authority(named, &host, port, scheme) {
                return Err(format!(
                    "its Host header `{}` names another authority than `{shown}`",
                    named.escape_debug()
                ));
            }
        }
        if !self.grant.allows(scheme, &host, port) {
            return Err(format!("`{shown}` is not granted to this module"));
        }
        Ok(Target {
            scheme,
            host,
            port,
            shown,
        })
    }
}

/// A request that passed the grant, before its addresses are known.
struct Target {
    scheme: Scheme,
    /// As [`canonical_host`] writes it: what egress limits are keyed by.
    host: String,
    port: u16,
    /// `scheme://host:port`, for the report and the log.
    shown: String,
}

/// Whether a `Host` header value names `host` (as [`canonical_host`] writes it) and `port`.
fn same_authority(header: &str, host: &str, port: u16, scheme: Scheme) -> bool {
    let Ok(named) = header.parse::<http::uri::Authority>() else {
        return false;
    };
    canonical_host(named.host()) == host
        && named.port_u16().unwrap_or(scheme.default_port()) == port
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_error: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        let target = match self.check(&request) {
            Ok(target) => target,
            Err(why) => {
                let error = Egress::deny(&self.record, self.started, why);
                return Box::new(async move { Err(error) });
            }
        };
        let counters = self.counters(target.shown.clone());
        counters.calls.fetch_add(1, Ordering::Relaxed);
        let grant = self.grant.clone();
        let record = self.record.clone();
        let started = self.started;
        let mut limits = self.limits;
        // A guest may ask for shorter timeouts than the operator's, never longer.
        if let Some(options) = options {
            if let Some(t) = options.connect_timeout {
                limits.connect_timeout = limits.connect_timeout.min(t);
            }
            if let Some(t) = options.first_byte_timeout {
                limits.first_byte_timeout = limits.first_byte_timeout.min(t);
            }
        }
        let gate = self.gate.clone();
        Box::new(async move {
            let call_started = Instant::now();
            // Room under the destination's fleet-wide limit, held until the body is done.
            let permit = gate.enter(&target.host).await.map_err(|e| {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                Error::InternalError(Some(format!("egress limit: {e}")))
            })?;
            let result = send(
                &target,
                &grant,
                &limits,
                request,
                counters.clone(),
                &record,
                started,
            )
            .await;
            if result.is_err() {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                counters
                    .wait_us
                    .fetch_add(call_started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            let (response, io) = result?;
            let response = response.map(|body| {
                Capped {
                    inner: body,
                    limit: limits.max_response_body,
                    seen: 0,
                    counters,
                    direction: Direction::Response,
                    call_started: Some(call_started),
                    _permit: permit,
                }
                .boxed_unsync()
            });
            Ok((response, io))
        })
    }
}

/// Resolves, checks the addresses, connects, and sends.
async fn send(
    target: &Target,
    grant: &Grant,
    limits: &HttpLimits,
    request: http::Request<WasiBody>,
    counters: Arc<Counters>,
    record: &Mutex<Record>,
    started: Instant,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
> {
    let connect = async {
        let addresses = resolve(&target.host, target.port).await?;
        let allowed: Vec<SocketAddr> = addresses
            .iter()
            .copied()
            .filter(|a| grant.allows_address(target.scheme, a.ip(), target.port))
            .collect();
        if allowed.is_empty() {
            let shown: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
            return Err(Egress::deny(
                record,
                started,
                format!(
                    "`{}` resolves to {}, which is not a public address and not named by this module's grant",
                    target.shown,
                    shown.join(", ")
                ),
            ));
        }
        let mut last = None;
        for address in allowed {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(Error::Connect(
            last.expect("at least one address was tried"),
        ))
    };
    let stream = tokio::time::timeout(limits.connect_timeout, connect)
        .await
        .map_err(|_| Error::ConnectionTimeout)??;

    match target.scheme {
        Scheme::Http => exchange(stream, request, limits, counters).await,
        Scheme::Https => {
            let name = tls_name(&target.host)?;
            let tls = tokio::time::timeout(
                limits.connect_timeout,
                tokio_rustls::TlsConnector::from(TLS.clone()).connect(name, stream),
            )
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
            exchange(tls, request, limits, counters).await
        }
    }
}

/// The response to `request` over `stream`, and the connection's remaining work.
async fn exchange<S>(
    stream: S,
    mut request: http::Request<WasiBody>,
    limits: &HttpLimits,
    counters: Arc<Counters>,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = tokio::time::timeout(
        limits.connect_timeout,
        hyper::client::conn::http1::handshake::<_, WasiBody>(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::from)?;

    // The request line carries the path only (the authority is in `Host`).
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let request = request.map(|body| {
        Capped {
            inner: body,
            limit: limits.max_request_body,
            seen: 0,
            counters: counters.clone(),
            direction: Direction::Request,
            call_started: None,
            _permit: None,
        }
        .boxed_unsync()
    });

    // Wait for the response while driving the connection; then hand the connection back to be
    // driven while the guest reads the body.
    let mut conn = Some(conn);
    let mut response = std::pin::pin!(tokio::time::timeout(
        limits.first_byte_timeout,
        sender.send_request(request)
    ));
    let waited: Result<Result<http::Response<hyper::body::Incoming>, hyper::Error>, _> =
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = response.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if let Some(c) = conn.as_mut()
                && let Poll::Ready(r) = Pin::new(c).poll(cx)
            {
                conn = None;
                if let Err(e) = r {
                    return Poll::Ready(Ok(Err(e)));
                }
                return response.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await;
    let response = waited
        .map_err(|_| Error::HttpResponseTimeout)?
        .map_err(|e| {
            if counters.sent.load(Ordering::Relaxed) > limits.max_request_body {
                Error::HttpRequestBodySize(Some(limits.max_request_body))
            } else {
                Error::from(e)
            }
        })?;
    let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
        match conn {
            Some(conn) => conn.await.map_err(Error::from),
            None => Ok(()),
        }
    });
    Ok((response.map(|b| b.map_err(Error::from).boxed_unsync()), io))
}

/// The addresses `host` stands for: itself when it is an address, else what the system
/// resolver says.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::DnsError {
            rcode: Some(e.to_string()),
            info_code: None,
        })?
        .collect();
    if found.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    Ok(found)
}

fn tls_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(rustls::pki_types::ServerName::from(ip));
    }
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| Error::HttpRequestUriInvalid)
}

/// The TLS client settings, built once: the webpki roots, no client certificate.
static TLS: LazyLock<Arc<rustls::ClientConfig>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
});

#[derive(Clone, Copy)]
enum Direction {
    Request,
    Response,
}

/// A body that counts its bytes into the call's destination and ends with an error past its
/// limit. A response body also records the call's wait when it ends or is dropped.
struct Capped {
    inner: WasiBody,
    limit: u64,
    seen: u64,
    counters: Arc<Counters>,
    direction: Direction,
    call_started: Option<Instant>,
    /// The destination's room under its egress limit, freed with the body.
    _permit: EgressPermit,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.seen > this.limit {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            this.seen += n;
            let counter = match this.direction {
                Direction::Request => &this.counters.sent,
                Direction::Response => &this.counters.received,
            };
            counter.fetch_add(n, Ordering::Relaxed);
            if this.seen > this.limit {
                if let Direction::Response = this.direction {
                    this.counters.failed.fetch_add(1, Ordering::Relaxed);
                }
                return Poll::Ready(Some(Err(match this.direction {
                    Direction::Request => Error::HttpRequestBodySize(Some(this.limit)),
                    Direction::Response => Error::HttpResponseBodySize(Some(this.limit)),
                })));
            }
        }
        if frame.is_none() {
            this.record_wait();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.seen > self.limit || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Capped {
    fn record_wait(&mut self) {
        if let Some(at) = self.call_started.take() {
            self.counters
                .wait_us
                .fetch_add(at.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }
}

impl Drop for Capped {
    fn drop(&mut self) {
        self.record_wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_lists_at_most_32_destinations_and_16_denials() {
        let egress = Egress::new(
            Arc::default(),
            HttpLimits::default(),
            Instant::now(),
            Arc::new(super::super::NoEgressLimits),
        );
        for i in 0..40 {
            egress
                .counters(format!("http://10.0.0.{i}:80"))
                .calls
                .fetch_add(1, Ordering::Relaxed);
        }
        for i in 0..20 {
            Egress::deny(&egress.record, egress.started, format!("attempt {i}"));
        }
        let (uses, denials) = egress.finish();
        assert_eq!(uses.len(), MAX_DESTINATIONS + 1);
        let other = uses.iter().find(|u| u.destination == "other").unwrap();
        assert_eq!(other.calls, 40 - MAX_DESTINATIONS as u64);
        assert_eq!(uses.iter().map(|u| u.calls).sum::<u64>(), 40);
        assert_eq!(denials.len() as u64, MAX_DENIALS_LOGGED);
        assert!(
            denials[15]
                .message
                .ends_with("(4 more requests were denied in this run)"),
            "{}",
            denials[15].message
        );
    }

    #[test]
    fn a_host_header_must_name_the_authority_requested() {
        assert!(same_authority(
            "api.example",
            "api.example",
            443,
            Scheme::Https
        ));
        assert!(same_authority(
            "API.example:443",
            "api.example",
            443,
            Scheme::Https
        ));
        assert!(same_authority(
            "api.example:8080",
            "api.example",
            8080,
            Scheme::Http
        ));
        assert!(!same_authority(
            "evil.example",
            "api.example",
            443,
            Scheme::Https
        ));
        assert!(!same_authority(
            "api.example:444",
            "api.example",
            443,
            Scheme::Https
        ));
        assert!(!same_authority(
            "api.example/x",
            "api.example",
            443,
            Scheme::Https
        ));
        // An IPv6 host is compared without its brackets, as the request's host is kept.
        assert!(same_authority("[::1]:8080", "::1", 8080, Scheme::Http));
        assert!(!same_authority("[::2]:8080", "::1", 8080, Scheme::Http));
    }
}
