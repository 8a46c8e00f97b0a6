"""Write a wasmq job in Python as a plain function.

A job is a WebAssembly component built against the `wasmq:job` WIT contract (`wit/`) with
componentize-py. This module hides the contract, as the Rust `wasmq-guest` crate does::

    from wasmq_job import job, log, Fail

    @job
    def hello(args, info):
        name = (args or {}).get("name", "world")
        if not name:
            raise Fail("`name` must not be empty")
        log.info(f"greeting {name} (attempt {info.attempt})")
        return {"message": f"Hello, {name}!"}

Build it with ``componentize-py -d wit -w job componentize app -p <job dir> -p guest-sdk/python
-o hello.wasm`` (``sample-jobs/build.sh`` does this for every ``sample-jobs/python-*``).

Arguments and results:

- The function takes ``()``, ``(args)`` or ``(args, info)``. ``args`` is the invocation's JSON
  args decoded (``None`` when there were none); when the parameter is annotated with a
  dataclass, the JSON object's fields fill one (no args: the dataclass's defaults); annotated
  ``bytes``, it gets the raw bytes. Args that do not decode end the job for good, naming the
  problem: retrying cannot fix them.
- The return value is encoded as JSON, or returned as is when it is ``bytes``.
- ``raise Fail(...)`` ends the job for good (the dead set); ``raise Retry(...)``, and any other
  exception, is a transient failure retried with backoff — like an exception in Sidekiq. The
  traceback is written to stderr, which the host captures into the job's record.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import traceback
import typing
from typing import Any, Callable, Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import host

try:
    from wit_world.imports import types
except ImportError:  # built for `job-http`, where `wasi:http/types` is in the world too
    from wit_world.imports import wasmq_job_types as types

__all__ = ["job", "log", "progress", "enqueue", "join_all", "wait", "Handle", "Outcome", "secret",
           "Retry", "Fail", "JobInfo"]

JobInfo = types.JobInfo
"""What the job knows about its invocation: ``id``, ``queue``, ``attempt``, ``max_attempts``."""


class Retry(Exception):
    """A transient failure: the job is tried again with backoff while attempts remain."""


class Fail(Exception):
    """A permanent failure: the job goes straight to the dead set."""


class _Log:
    """``log.info("…")`` and friends append a record to the job's log."""

    def trace(self, message: str) -> None:
        host.log(host.Level.TRACE, str(message))

    def debug(self, message: str) -> None:
        host.log(host.Level.DEBUG, str(message))

    def info(self, message: str) -> None:
        host.log(host.Level.INFO, str(message))

    def warn(self, message: str) -> None:
        host.log(host.Level.WARN, str(message))

    def error(self, message: str) -> None:
        host.log(host.Level.ERROR, str(message))


log = _Log()


def progress(percent: int, note: Optional[str] = None) -> None:
    """Reports progress, 0–100 (clamped), with an optional note; visible while the job runs."""
    host.progress(max(0, min(100, int(percent))), note)


class Handle(str):
    """A sub-job this run enqueued: its id (a ``str``), and ``join()`` for its result."""

    def join(self) -> Any:
        """Waits for the sub-job and returns its JSON result decoded (``bytes`` if it returned
        raw bytes). A sub-job that died or was cancelled raises ``Retry`` naming its reason, so
        that this job runs again later (and, out of attempts, dies with that reason)."""
        return join_all([self])[0]


@dataclasses.dataclass
class Outcome:
    """Where a sub-job stands: ``state`` is ``"done"`` (with ``result``), ``"dead"`` (with
    ``kind`` and ``message``), ``"cancelled"`` or ``"pending"`` (not ended yet)."""

    state: str
    result: Any = None
    kind: Optional[str] = None
    message: Optional[str] = None


def enqueue(module: str, args: Any = None, *, key: Optional[str] = None, queue: Optional[str] = None,
            delay: Optional[float] = None, max_attempts: Optional[int] = None,
            priority: Optional[int] = None) -> Handle:
    """Enqueues a sub-job of ``module`` (``sha256:…``) with ``args`` (JSON, or ``bytes`` as they
    are) on this job's queue (or ``queue``), no earlier than ``delay`` seconds from now. Its id is
    this job's id and ``key`` (or the call's position), so this job running again names the same
    sub-job, which is not enqueued twice. Returns its ``Handle``; raises ``Retry`` with the host's
    reason if refused."""
    payload = args if isinstance(args, bytes) else json.dumps(args).encode()
    options = host.EnqueueOptions(
        key=key,
        queue=queue,
        delay_ms=None if delay is None else max(0, int(delay * 1000)),
        max_attempts=max_attempts,
        priority=priority,
    )
    try:
        return Handle(host.enqueue(module, payload, options))
    except Err as e:
        raise Retry(f"enqueue refused: {e.value}") from None


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return data


def wait(handles: list, first: Optional[int] = None, timeout: Optional[float] = None) -> list:
    """Waits until ``first`` of ``handles`` have ended (all when ``None``) or ``timeout`` seconds
    pass; returns an ``Outcome`` for each, in order. Nothing here fails this job: the caller
    decides. Raises ``Retry`` when the host refuses the wait."""
    options = host.JoinOptions(
        first=first,
        timeout_ms=None if timeout is None else max(0, int(timeout * 1000)),
    )
    try:
        outcomes = host.join([str(h) for h in handles], options)
    except Err as e:
        raise Retry(f"join refused: {e.value}") from None
    out = []
    for o in outcomes:
        if isinstance(o, host.Outcome_Done):
            out.append(Outcome("done", result=_decode(o.value)))
        elif isinstance(o, host.Outcome_Dead):
            out.append(Outcome("dead", kind=o.value.kind, message=o.value.message))
        elif isinstance(o, host.Outcome_Cancelled):
            out.append(Outcome("cancelled"))
        else:
            out.append(Outcome("pending"))
    return out


def join_all(handles: list) -> list:
    """Waits for all of ``handles`` and returns their results in order; the first sub-job that
    died or was cancelled raises ``Retry`` naming it (see ``Handle.join``)."""
    results = []
    for h, o in zip(handles, wait(handles)):
        if o.state == "done":
            results.append(o.result)
        elif o.state == "dead":
            raise Retry(f"sub-job {h} died ({o.kind}): {o.message}")
        elif o.state == "cancelled":
            raise Retry(f"sub-job {h} was cancelled")
        else:
            raise Retry(f"the host returned before sub-job {h} ended")
    return results


def secret(name: str) -> str:
    """Reads secret ``name``, which the operator granted this module (``wasmq grant … --secret
    NAME``). Raises ``Fail`` with the host's reason when it cannot be read (not granted, not set):
    retrying cannot grant it. The host redacts the value from everything the run leaves behind."""
    try:
        return host.secret(name)
    except Err as e:
        raise Fail(f"secret `{name}`: {e.value}") from None


def _fill(shape: type, value: Any) -> Any:
    """The dataclass ``shape`` from a JSON object (or its defaults for no args); ``Fail`` naming
    the problem otherwise."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise Fail(f"args must be a JSON object for {shape.__name__}, not {type(value).__name__}")
    fields = {f.name for f in dataclasses.fields(shape)}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise Fail(f"unknown field(s) in args: {', '.join(unknown)} ({shape.__name__} has {', '.join(sorted(fields))})")
    try:
        return shape(**value)
    except TypeError as e:
        raise Fail(f"args do not fit {shape.__name__}: {e}") from None


def job(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Makes ``fn`` the component's job: defines the ``WitWorld`` export componentize-py looks
    for in ``fn``'s module. Returns ``fn`` unchanged, so it can still be called in tests."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) > 2:
        raise TypeError(f"a job takes (), (args) or (args, info); {fn.__name__} takes {len(params)}")
    hints = typing.get_type_hints(fn)
    wanted = hints.get(params[0].name) if params else None
    raw = wanted is bytes
    shape = wanted if dataclasses.is_dataclass(wanted) else None

    class WitWorld(wit_world.WitWorld):
        def run(self, info: types.JobInfo, args: bytes) -> bytes:
            try:
                if raw:
                    decoded: Any = args
                elif args:
                    try:
                        decoded = json.loads(args)
                    except ValueError as e:
                        raise Fail(f"args are not JSON: {e}") from None
                else:
                    decoded = None
                if shape is not None:
                    decoded = _fill(shape, decoded)
                result = fn(*[decoded, info][: len(params)])
                if isinstance(result, bytes):
                    return result
                return json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()
            except Fail as e:
                raise Err(types.JobError_Fail(str(e) or "failed")) from None
            except Exception as e:  # noqa: BLE001 - every exception is the job's failure
                if not isinstance(e, Retry):
                    traceback.print_exc()
                message = str(e) if isinstance(e, Retry) else f"{type(e).__name__}: {e}"
                raise Err(types.JobError_Retry(message or "retry")) from None

    WitWorld.__qualname__ = "WitWorld"
    sys.modules[fn.__module__].WitWorld = WitWorld  # type: ignore[attr-defined]
    return fn
