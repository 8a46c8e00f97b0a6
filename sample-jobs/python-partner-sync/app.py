"""`python-partner-sync` — `partner-sync` in Python: fetch a page of records from a partner API,
clean them, and store them through another API (`sample-jobs/partner-sync` is the Rust original).

Args: `{"source": "<url>", "page": n, "sink": "<url>"}`. Fetches `GET <source>?page=n` (a JSON
array of objects), keeps the records that have an email and normalises them — `id` as is,
`name` trimmed with inner spaces collapsed and each word capitalised, `email` trimmed and
lowercased, `amount` (a number or a numeric string) as a number of cents — then POSTs them as a
JSON array to `sink` with `Authorization: Bearer <SINK_TOKEN>`, the secret the operator granted
it. Result: `{"fetched": n, "stored": n}`. A 5xx or 429, or the network failing, is retried; a
4xx, a denied destination or a missing secret is not.
"""

import json

from wasmq_http import Denied, HttpError, get, request
from wasmq_job import Fail, Retry, job, log, secret


def check(what, response):
    if response.ok:
        return
    if response.status == 429 or response.status >= 500:
        raise Retry(f"{what} answered {response.status}")
    raise Fail(f"{what} answered {response.status}")


def cents(amount):
    try:
        return round(float(amount) * 100)
    except (TypeError, ValueError):
        return 0


def clean(record):
    email = record.get("email")
    if not isinstance(email, str) or "@" not in email:
        return None
    name = record.get("name") if isinstance(record.get("name"), str) else ""
    return {
        "id": record.get("id"),
        "name": " ".join(word.capitalize() for word in name.split()),
        "email": email.strip().lower(),
        "amount_cents": cents(record.get("amount")),
    }


@job
def partner_sync(args):
    token = secret("SINK_TOKEN")
    separator = "&" if "?" in args["source"] else "?"
    try:
        page = get(f"{args['source']}{separator}page={args['page']}")
        check("the partner API", page)
        records = page.json()
        cleaned = [c for c in map(clean, records) if c is not None]
        log.info(f"page {args['page']}: {len(records)} records, {len(cleaned)} kept")
        stored = request(
            "POST",
            args["sink"],
            {"content-type": "application/json", "authorization": f"Bearer {token}"},
            json.dumps(cleaned).encode(),
        )
        check("the sink", stored)
    except Denied as e:
        raise Fail(str(e)) from None
    except HttpError as e:
        raise Retry(str(e)) from None
    return {"fetched": len(records), "stored": len(cleaned)}
