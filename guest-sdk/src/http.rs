//! Outbound HTTP from a job, blocking: [`get`], [`post_json`], or a [`Request`] built by hand.
//!
//! Only destinations the operator granted this module are reachable (`wasmq grant sha256:…
//! --http https://api.example`; `wasmq run --http …` for a local run); any other request fails
//! with [`Error::Denied`]. While a job waits on the network it holds no host thread and burns no
//! fuel, so thousands of jobs can wait at once.
//!
//! Built on `wasi:http/outgoing-handler` through the `wasip2` crate (the Bytecode Alliance's
//! bindings of WASI 0.2), with a small blocking client on top: a job function is synchronous, and
//! an async client (`wstd`) would bring a runtime for nothing. Redirects (301, 302, 303, 307,
//! 308) are followed up to five times; each hop is a new request, checked against the grant.

use std::fmt;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};

/// How many redirects a request follows.
const MAX_REDIRECTS: usize = 5;

/// Why a request did not produce a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The host refused the request: its destination is not granted to this module (or its
    /// name resolves to an address the grant does not name).
    Denied,
    /// The URL is not `http(s)://host[:port][/path][?query]`.
    Url(String),
    /// Any other failure (DNS, connect, timeout, a body over the host's cap, …), as the host
    /// described it.
    Failed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied => write!(f, "HTTP request denied: the destination is not granted"),
            Error::Url(u) => write!(f, "not an http(s) URL: {u}"),
            Error::Failed(m) => write!(f, "HTTP request failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::HttpRequestDenied => Error::Denied,
            other => Error::Failed(format!("{other:?}")),
        }
    }
}

/// A response: status, headers (names lowercase) and the whole body.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body decoded as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A request to build and [`send`](Request::send).
#[derive(Clone, Debug)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    /// A request with `method` (`GET`, `POST`, …) to `url`.
    pub fn new(method: &str, url: &str) -> Self {
        Request {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends it and reads the whole response, following redirects.
    pub fn send(self) -> Result<Response, Error> {
        let mut request = self;
        for _ in 0..=MAX_REDIRECTS {
            let response = send_once(&request)?;
            let Some(location) = response
                .header("location")
                .filter(|_| matches!(response.status, 301 | 302 | 303 | 307 | 308))
            else {
                return Ok(response);
            };
            let next = resolve(&request.url, location)?;
            if response.status == 303
                || (matches!(response.status, 301 | 302) && request.method == "POST")
            {
                request.method = "GET".to_owned();
                request.body.clear();
            }
            request.url = next;
        }
        Err(Error::Failed(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, Error> {
    Request::new("GET", url).send()
}

/// `POST url` with `body` as JSON (and `content-type: application/json`).
pub fn post_json<T: serde::Serialize + ?Sized>(url: &str, body: &T) -> Result<Response, Error> {
    let bytes = serde_json::to_vec(body).map_err(|e| Error::Failed(e.to_string()))?;
    Request::new("POST", url)
        .header("content-type", "application/json")
        .body(bytes)
        .send()
}

/// The parts of an absolute URL.
struct Url<'a> {
    https: bool,
    authority: &'a str,
    path: &'a str,
}

fn parse(url: &str) -> Result<Url<'_>, Error> {
    let bad = || Error::Url(url.to_owned());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => return Err(bad()),
    };
    let rest = rest.split('#').next().unwrap_or("");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    Ok(Url {
        https,
        authority,
        path: if path.is_empty() { "/" } else { path },
    })
}

/// A redirect's `Location`, absolute or relative to `base`.
fn resolve(base: &str, location: &str) -> Result<String, Error> {
    if location.contains("://") {
        return Ok(location.to_owned());
    }
    let url = parse(base)?;
    let scheme = if url.https { "https" } else { "http" };
    Ok(if location.starts_with('/') {
        format!("{scheme}://{}{location}", url.authority)
    } else {
        let dir = &url.path[..url.path.rfind('/').map_or(0, |i| i + 1)];
        format!("{scheme}://{}{dir}{location}", url.authority)
    })
}

fn send_once(request: &Request) -> Result<Response, Error> {
    let url = parse(&request.url)?;
    let headers = Fields::from_list(&request.headers)
        .map_err(|e| Error::Failed(format!("header not allowed: {e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_owned()),
    };
    let invalid = |what: &str| Error::Url(format!("{what} of {}", request.url));
    outgoing
        .set_method(&method)
        .map_err(|()| invalid("method"))?;
    outgoing
        .set_scheme(Some(if url.https {
            &Scheme::Https
        } else {
            &Scheme::Http
        }))
        .map_err(|()| invalid("scheme"))?;
    outgoing
        .set_authority(Some(url.authority))
        .map_err(|()| invalid("authority"))?;
    outgoing
        .set_path_with_query(Some(url.path))
        .map_err(|()| invalid("path"))?;
    let body = outgoing
        .body()
        .map_err(|()| Error::Failed("request body taken twice".into()))?;
    let pending = outgoing_handler::handle(outgoing, None)?;
    write_body(body, &request.body)?;

    pending.subscribe().block();
    let incoming = pending
        .get()
        .ok_or_else(|| Error::Failed("response not ready after waiting".into()))?
        .map_err(|()| Error::Failed("response taken twice".into()))??;
    let status = incoming.status();
    let headers = incoming.headers().entries();
    let body = incoming
        .consume()
        .map_err(|()| Error::Failed("response body taken twice".into()))?;
    let body = read_body(body)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), Error> {
    {
        let stream = body
            .write()
            .map_err(|()| Error::Failed("request body stream taken twice".into()))?;
        for chunk in bytes.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| Error::Failed(format!("writing the request body: {e:?}")))?;
        }
    }
    OutgoingBody::finish(body, None)?;
    Ok(())
}

fn read_body(body: IncomingBody) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| Error::Failed("response body stream taken twice".into()))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(wasip2::io::streams::StreamError::Closed) => break,
                Err(wasip2::io::streams::StreamError::LastOperationFailed(e)) => {
                    let code = wasip2::http::types::http_error_code(&e);
                    return Err(match code {
                        Some(code) => code.into(),
                        None => Error::Failed(e.to_debug_string()),
                    });
                }
            }
        }
    }
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let u = parse("https://api.example:8443/v1/items?page=2#top").unwrap();
        assert!(u.https);
        assert_eq!(u.authority, "api.example:8443");
        assert_eq!(u.path, "/v1/items?page=2");
        assert_eq!(parse("http://h").unwrap().path, "/");
        assert_eq!(parse("http://h?q=1").unwrap().path, "?q=1");
        assert!(parse("ftp://h").is_err());
        assert!(parse("http://user@h/").is_err());
        assert!(parse("h/x").is_err());
    }

    #[test]
    fn redirects_resolve_against_the_request() {
        let base = "http://a.example:8080/v1/items?page=2";
        assert_eq!(resolve(base, "/x").unwrap(), "http://a.example:8080/x");
        assert_eq!(resolve(base, "y").unwrap(), "http://a.example:8080/v1/y");
        assert_eq!(
            resolve(base, "https://b.example/").unwrap(),
            "https://b.example/"
        );
    }
}
