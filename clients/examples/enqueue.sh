#!/usr/bin/env bash
# Upload a job, enqueue it, wait for the result — with curl. Needs WASMQ_URL, WASMQ_TOKEN, WASMQ_JOB.
set -euo pipefail
auth="Authorization: Bearer $WASMQ_TOKEN"
module=$(curl -sf -H "$auth" --data-binary @"$WASMQ_JOB" "$WASMQ_URL/v1/modules" | python3 -c 'import json,sys; print(json.load(sys.stdin)["module"])')
id=$(curl -sf -H "$auth" -H 'Content-Type: application/json' \
  -d "{\"module\": \"$module\", \"args\": {\"name\": \"curl\"}}" "$WASMQ_URL/v1/jobs" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -sf -H "$auth" "$WASMQ_URL/v1/jobs/$id?wait=30s" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["state"], j["report"]["result"]["message"])'
