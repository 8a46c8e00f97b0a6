"""The Python client against a live `wasmq serve` (with an in-process worker).

Run by `tests/all/clients.rs`, which starts Redis and the server and sets WASMQ_URL, WASMQ_TOKEN
(admin), WASMQ_ENQUEUE_TOKEN (enqueue only) and WASMQ_JOBS_DIR (the sample job components).
"""

import os
import sys
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from wasmq import Client, WasmqError  # noqa: E402

URL = os.environ.get("WASMQ_URL")


@unittest.skipUnless(URL, "WASMQ_URL is not set: run through `cargo test --test clients`")
class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = Client(URL, token=os.environ["WASMQ_TOKEN"])
        jobs = os.environ["WASMQ_JOBS_DIR"]
        cls.hello = cls.client.upload(os.path.join(jobs, "hello.wasm"))
        with open(os.path.join(jobs, "chaos.wasm"), "rb") as f:
            cls.chaos = cls.client.upload(f.read())

    def test_upload_returns_the_content_address(self):
        self.assertRegex(self.hello, r"^sha256:[0-9a-f]{64}$")
        self.assertEqual(self.client.upload(os.path.join(os.environ["WASMQ_JOBS_DIR"], "hello.wasm")), self.hello)

    def test_enqueue_and_wait(self):
        job_id = self.client.enqueue(self.hello, {"name": "Python"})
        job = self.client.wait(job_id, timeout=30)
        self.assertEqual(job["state"], "succeeded")
        self.assertEqual(job["report"]["result"], {"message": "Hello, Python!"})
        self.assertEqual(self.client.get(job_id)["attempts"], 1)

    def test_enqueue_many_and_idempotent_ids(self):
        tag = uuid.uuid4().hex[:8]
        ids = self.client.enqueue_many(
            [{"module": self.hello, "id": f"py-{tag}-{i}", "args": {"name": str(i)}} for i in range(5)]
        )
        self.assertEqual(ids, [f"py-{tag}-{i}" for i in range(5)])
        for i, job_id in enumerate(ids):
            self.assertEqual(self.client.wait(job_id, timeout=30)["report"]["result"], {"message": f"Hello, {i}!"})
        # Same id again: the existing job, not a new one.
        self.assertEqual(self.client.enqueue(self.hello, {"name": "other"}, id=ids[0]), ids[0])
        self.assertEqual(self.client.get(ids[0])["report"]["result"], {"message": "Hello, 0!"})

    def test_a_failing_job_ends_dead_with_its_reason(self):
        job_id = self.client.enqueue(self.chaos, {"mode": "fail", "message": "bad invoice"})
        job = self.client.wait(job_id, timeout=30)
        self.assertEqual(job["state"], "dead")
        self.assertEqual(job["last_error"]["kind"], "fail")
        self.assertIn("bad invoice", job["last_error"]["message"])

    def test_cancel_a_scheduled_job(self):
        job_id = self.client.enqueue(self.hello, {"name": "never"}, run_at="2999-01-01T00:00:00Z")
        self.assertEqual(self.client.cancel(job_id), "cancelled")
        self.assertEqual(self.client.get(job_id)["state"], "cancelled")
        with self.assertRaises(WasmqError) as e:
            self.client.cancel(job_id)
        self.assertEqual((e.exception.status, e.exception.code), (409, "already_final"))

    def test_errors_carry_the_server_error(self):
        with self.assertRaises(WasmqError) as e:
            self.client.enqueue(self.hello, fuel=0)
        self.assertEqual((e.exception.status, e.exception.code, e.exception.field), (422, "invalid_invocation", "fuel"))
        with self.assertRaises(WasmqError) as e:
            self.client.enqueue("sha256:" + "0" * 64)
        self.assertEqual((e.exception.code, e.exception.field), ("unknown_module", "module"))
        with self.assertRaises(WasmqError) as e:
            self.client.get("no-such-job")
        self.assertEqual(e.exception.status, 404)
        with self.assertRaises(WasmqError) as e:
            self.client.upload(b"not a component")
        self.assertEqual((e.exception.status, e.exception.code), (422, "invalid_module"))

    def test_tokens_are_checked(self):
        with self.assertRaises(WasmqError) as e:
            Client(URL, token="wrong-token-0123456789").get("x")
        self.assertEqual((e.exception.status, e.exception.code), (401, "unauthorized"))
        enqueuer = Client(URL, token=os.environ["WASMQ_ENQUEUE_TOKEN"])
        with self.assertRaises(WasmqError) as e:
            enqueuer.upload(b"\0asm")
        self.assertEqual((e.exception.status, e.exception.code), (403, "forbidden"))


if __name__ == "__main__":
    unittest.main()
