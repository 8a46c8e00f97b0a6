"""A small client for the wasmq HTTP API (standard library only).

    from wasmq import Client
    client = Client("http://127.0.0.1:8080", token="…")
    module = client.upload("hello.wasm")
    job_id = client.enqueue(module, {"name": "Ada"})
    job = client.wait(job_id)
    print(job["state"], job["report"]["result"])

Every non-2xx response raises `WasmqError` carrying the server's error code, message and field.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, TypedDict, Union

__all__ = ["Client", "WasmqError", "Job", "FINAL_STATES"]

#: States a job does not leave on its own.
FINAL_STATES = ("succeeded", "dead", "cancelled")


class WasmqError(Exception):
    """An error response from the server (or no response at all: `status` 0)."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None):
        super().__init__(f"{status} {code}: {message}" + (f" (field `{field}`)" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class Job(TypedDict, total=False):
    """A job's record, as `GET /v1/jobs/{id}` returns it."""

    id: str
    queue: str
    state: str
    invocation: Dict[str, Any]
    attempts: int
    enqueued_at_ms: int
    started_at_ms: Optional[int]
    finished_at_ms: Optional[int]
    worker: Optional[str]
    last_error: Optional[Dict[str, Any]]
    progress: Optional[Dict[str, Any]]
    report: Optional[Dict[str, Any]]


class Client:
    """Talks to one `wasmq serve`."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        content_type: str = "application/json",
        query: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        req = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)["error"]
                raise WasmqError(e.code, err["code"], err["message"], err.get("field")) from None
            except (ValueError, KeyError, TypeError):
                raise WasmqError(e.code, "http_error", raw.decode("utf-8", "replace")) from None
        except urllib.error.URLError as e:
            raise WasmqError(0, "unreachable", f"cannot reach {self.url}: {e.reason}") from None
        return json.loads(raw) if raw else None

    def upload(self, component: Union[bytes, str, "os.PathLike[str]"]) -> str:
        """Uploads a job component (bytes or a path); returns its `sha256:…` address."""
        if isinstance(component, bytes):
            data = component
        else:
            with open(component, "rb") as f:
                data = f.read()
        return self._request("POST", "/v1/modules", data, "application/wasm")["module"]

    def enqueue(
        self,
        module: str,
        args: Any = None,
        *,
        queue: Optional[str] = None,
        id: Optional[str] = None,
        max_attempts: Optional[int] = None,
        timeout_ms: Optional[int] = None,
        fuel: Optional[int] = None,
        memory_mb: Optional[int] = None,
        run_at: Optional[str] = None,
        priority: Optional[int] = None,
    ) -> str:
        """Enqueues one invocation; returns the job id (yours, or a generated one)."""
        fields = dict(queue=queue, id=id, max_attempts=max_attempts, timeout_ms=timeout_ms,
                      fuel=fuel, memory_mb=memory_mb, run_at=run_at, priority=priority)
        invocation: Dict[str, Any] = {"module": module, "args": args}
        invocation.update({k: v for k, v in fields.items() if v is not None})
        return self._request("POST", "/v1/jobs", json.dumps(invocation).encode())["id"]

    def enqueue_many(self, invocations: List[Dict[str, Any]]) -> List[str]:
        """Enqueues invocations together: all are checked before any is enqueued."""
        body = json.dumps({"jobs": invocations}).encode()
        return [j["id"] for j in self._request("POST", "/v1/jobs", body)["jobs"]]

    def get(self, id: str, *, queue: Optional[str] = None) -> Job:
        """The job's current record."""
        return self._request("GET", "/v1/jobs/" + urllib.parse.quote(id, safe=""), query={"queue": queue})

    def wait(self, id: str, timeout: float = 60.0, *, queue: Optional[str] = None) -> Job:
        """Waits (long polls) until the job ends or `timeout` seconds pass; returns its record."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            chunk = max(1, min(int(left), 60))
            job = self._request(
                "GET",
                "/v1/jobs/" + urllib.parse.quote(id, safe=""),
                query={"queue": queue, "wait": f"{chunk}s"},
                timeout=chunk + self.timeout,
            )
            if job["state"] in FINAL_STATES or time.monotonic() >= deadline:
                return job

    def cancel(self, id: str, *, queue: Optional[str] = None) -> str:
        """Cancels the job: `"cancelled"` if it was waiting, `"cancelling"` if it is running."""
        path = "/v1/jobs/" + urllib.parse.quote(id, safe="")
        return self._request("DELETE", path, query={"queue": queue})["outcome"]
