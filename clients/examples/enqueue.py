# Upload a job, enqueue it, wait for the result — with the Python client.
# Needs WASMQ_URL, WASMQ_TOKEN, WASMQ_JOB (and clients/python on the path, or `pip install clients/python`).
import os

from wasmq import Client

client = Client(os.environ["WASMQ_URL"], token=os.environ["WASMQ_TOKEN"])
module = client.upload(os.environ["WASMQ_JOB"])
job_id = client.enqueue(module, {"name": "Python"}, max_attempts=3)
job = client.wait(job_id, timeout=30)
print(job["state"], job["report"]["result"]["message"])
