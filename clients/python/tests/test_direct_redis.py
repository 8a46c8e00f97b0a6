"""Enqueue straight into Redis with the published script (docs/redis-enqueue.lua) and Python's
`redis` package; the server's worker runs the jobs. Run by `tests/all/clients.rs` (WASMQ_REDIS_URL).
"""

import json
import os
import sys
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from wasmq import Client  # noqa: E402

try:
    import redis
except ImportError:  # pragma: no cover - reported as a skip, with the reason
    redis = None

REPO = os.path.join(os.path.dirname(__file__), "..", "..", "..")


def enqueue_direct(r, script, queue, job_id, invocation, priority=0, max_attempts=5, run_at_ms=0):
    """What docs/redis-enqueue.lua expects: the queue's seven keys and each job's record key; two
    key prefixes, a count, then id, invocation JSON, priority, max attempts and run_at (Unix ms,
    0 = now) per job."""
    base = f"wasmq:{{{queue}}}:"
    keys = [base + k for k in ("ready", "scheduled", "leased", "dead", "wake", "seq", "stats")]
    keys.append(base + "job:" + job_id)
    argv = [base + "job:", base + "done:", 1, job_id, json.dumps(invocation), priority, max_attempts, run_at_ms]
    r.sadd("wasmq:queues", queue)
    return script(keys=keys, args=argv)


@unittest.skipUnless(os.environ.get("WASMQ_REDIS_URL"), "WASMQ_REDIS_URL is not set: run through `cargo test --test clients`")
@unittest.skipIf(redis is None, "the `redis` package is not installed (pip install redis)")
class DirectRedisTest(unittest.TestCase):
    def setUp(self):
        self.r = redis.Redis.from_url(os.environ["WASMQ_REDIS_URL"])
        with open(os.path.join(REPO, "docs", "redis-enqueue.lua")) as f:
            self.script = self.r.register_script(f.read())
        self.client = Client(os.environ["WASMQ_URL"], token=os.environ["WASMQ_TOKEN"])
        self.hello = self.client.upload(os.path.join(os.environ["WASMQ_JOBS_DIR"], "hello.wasm"))

    def test_a_job_written_to_redis_runs(self):
        job_id = "direct-" + uuid.uuid4().hex
        created = enqueue_direct(self.r, self.script, "default", job_id, {"module": self.hello, "args": {"name": "Redis"}})
        self.assertEqual(created, [1])
        job = self.client.wait(job_id, timeout=30)
        self.assertEqual(job["state"], "succeeded")
        self.assertEqual(job["report"]["result"], {"message": "Hello, Redis!"})
        # The id is the idempotency key here too.
        self.assertEqual(enqueue_direct(self.r, self.script, "default", job_id, {"module": self.hello}), [0])

    def test_an_unknown_module_fails_the_job_with_the_reason(self):
        job_id = "direct-" + uuid.uuid4().hex
        enqueue_direct(self.r, self.script, "default", job_id, {"module": "sha256:" + "1" * 64})
        job = self.client.wait(job_id, timeout=30)
        self.assertEqual(job["state"], "dead")
        self.assertEqual(job["last_error"]["kind"], "module")
        self.assertIn("is not in the module store", job["last_error"]["message"])

    def test_an_invocation_the_worker_cannot_parse_is_dead_with_the_reason(self):
        job_id = "direct-" + uuid.uuid4().hex
        enqueue_direct(self.r, self.script, "default", job_id, {"module": self.hello, "fuel": "lots"})
        # The record's invocation does not parse, so it is read straight from Redis.
        key = f"wasmq:{{default}}:job:{job_id}"
        for _ in range(300):
            if self.r.hget(key, "state") == b"dead":
                break
            __import__("time").sleep(0.05)
        self.assertEqual(self.r.hget(key, "state"), b"dead")
        err = json.loads(self.r.hget(key, "err"))
        self.assertEqual(err["kind"], "invocation")
        self.assertIn("`fuel`", err["message"])

    def test_the_script_refuses_what_would_break_a_worker(self):
        with self.assertRaises(redis.ResponseError) as e:
            enqueue_direct(self.r, self.script, "default", "bad", {"module": "md5:abc"})
        self.assertIn("`module` must be", str(e.exception))


if __name__ == "__main__":
    unittest.main()
