"""Outbound HTTP from a Python job, blocking: ``get``, ``post_json``, ``request``.

Only destinations the operator granted the module are reachable (``wasmq grant sha256:…
--http https://api.example``); any other request raises ``Denied``. While the job waits on the
network it holds no host thread and burns no fuel.

Built on ``wasi:http/outgoing-handler``: an app that imports this module is built for the
``job-http`` world (``sample-jobs/build.sh`` does that for a job directory holding a file named
``uses-http``). Redirects (301, 302, 303, 307, 308) are followed up to five times; each hop is a
new request, checked against the grant.
"""

from __future__ import annotations

import json
from typing import Any, Optional
from urllib.parse import urljoin, urlsplit

from componentize_py_types import Err, Ok, Some
from wit_world.imports import outgoing_handler, streams
from wit_world.imports import wasi_http_types as http

__all__ = ["get", "post_json", "request", "Response", "HttpError", "Denied"]

MAX_REDIRECTS = 5


class HttpError(Exception):
    """A request that produced no response (DNS, connect, timeout, a body over the host's cap)."""


class Denied(HttpError):
    """The host refused the request: its destination is not granted to this module."""


class Response:
    """A response: ``status``, ``headers`` (names lowercase) and the whole ``body``."""

    def __init__(self, status: int, headers: list[tuple[str, bytes]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), as text."""
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v.decode("utf-8", "replace")
        return None

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300


def _error(code: Any) -> HttpError:
    if isinstance(code, http.ErrorCode_HttpRequestDenied):
        return Denied("HTTP request denied: the destination is not granted")
    return HttpError(f"HTTP request failed: {type(code).__name__.removeprefix('ErrorCode_')}")


def _send_once(method: str, url: str, headers: list[tuple[str, bytes]], body: bytes) -> Response:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise HttpError(f"not an http(s) URL: {url}")
    outgoing = http.OutgoingRequest(http.Fields.from_list(headers))
    methods = {
        "GET": http.Method_Get(),
        "HEAD": http.Method_Head(),
        "POST": http.Method_Post(),
        "PUT": http.Method_Put(),
        "DELETE": http.Method_Delete(),
        "PATCH": http.Method_Patch(),
        "OPTIONS": http.Method_Options(),
    }
    outgoing.set_method(methods.get(method, http.Method_Other(method)))
    outgoing.set_scheme(http.Scheme_Https() if parts.scheme == "https" else http.Scheme_Http())
    outgoing.set_authority(parts.netloc)
    path = parts.path or "/"
    outgoing.set_path_with_query(path + (f"?{parts.query}" if parts.query else ""))
    outgoing_body = outgoing.body()
    try:
        pending = outgoing_handler.handle(outgoing, None)
    except Err as e:
        raise _error(e.value) from None
    with outgoing_body.write() as stream:
        for i in range(0, len(body), 4096):
            stream.blocking_write_and_flush(body[i : i + 4096])
    http.OutgoingBody.finish(outgoing_body, None)

    with pending.subscribe() as ready:
        ready.block()
    answer = pending.get()
    if answer is None:
        raise HttpError("response not ready after waiting")
    # option<result<result<incoming-response, error-code>>>: the outer result only says whether
    # the response was taken before; the inner one is the response or why there is none.
    outer = answer.value if isinstance(answer, Some) else answer
    if isinstance(outer, Err):
        raise HttpError("response taken twice")
    inner = outer.value if isinstance(outer, Ok) else outer
    if isinstance(inner, Err):
        raise _error(inner.value)
    incoming = inner.value if isinstance(inner, Ok) else inner
    status = incoming.status()
    with incoming.headers() as fields:
        response_headers = fields.entries()
    incoming_body = incoming.consume()
    chunks = []
    with incoming_body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(64 * 1024))
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                code = http.http_error_code(e.value.value)
                raise (_error(code) if code is not None else HttpError(e.value.value.to_debug_string())) from None
    http.IncomingBody.finish(incoming_body).__exit__(None, None, None)
    incoming.__exit__(None, None, None)
    return Response(status, response_headers, b"".join(chunks))


def request(
    method: str,
    url: str,
    headers: Optional[dict[str, str]] = None,
    body: bytes = b"",
) -> Response:
    """Sends ``method url`` with ``headers`` and ``body``; follows redirects."""
    fields = [(k.lower(), v.encode()) for k, v in (headers or {}).items()]
    for _ in range(MAX_REDIRECTS + 1):
        response = _send_once(method, url, fields, body)
        location = response.header("location")
        if response.status not in (301, 302, 303, 307, 308) or location is None:
            return response
        url = urljoin(url, location)
        if response.status == 303 or (response.status in (301, 302) and method == "POST"):
            method, body = "GET", b""
    raise HttpError(f"more than {MAX_REDIRECTS} redirects")


def get(url: str, headers: Optional[dict[str, str]] = None) -> Response:
    """``GET url``."""
    return request("GET", url, headers)


def post_json(url: str, value: Any, headers: Optional[dict[str, str]] = None) -> Response:
    """``POST url`` with ``value`` as JSON (and ``content-type: application/json``)."""
    all_headers = {"content-type": "application/json", **(headers or {})}
    return request("POST", url, all_headers, json.dumps(value).encode())
