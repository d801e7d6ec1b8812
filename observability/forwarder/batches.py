"""What the forwarder sends: events as AgentField's envelope, in signed batches, with retries."""

import concurrent.futures
import hashlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils import timezone

from agentfield_site.lib import backoff, outbound
from agentfield_site.lib.timefmt import iso

from ..models import ForwarderConfig


@dataclass(frozen=True)
class Target:
    """What the sending threads need from the configuration, read once per run."""

    url: str
    secret: str
    headers: dict[str, str]

    @classmethod
    def of(cls, config: ForwarderConfig) -> "Target":
        return cls(url=config.url, secret=config.secret, headers=dict(config.headers))


@dataclass
class Batch:
    """Events serialized once into the body that every attempt sends and signs."""

    batch_id: str
    entries: list[dict]
    body: bytes
    end_id: int = 0  # the cursor once this batch is done

    @classmethod
    def of(cls, entries: list[dict], end_id: int = 0) -> "Batch":
        ids = ",".join(str(e["event_id"]) for e in entries)
        digest = hashlib.sha256(f"{entries[0]['timestamp']}|{ids}".encode()).hexdigest()[:32]
        batch_id = f"batch_{digest}"
        envelope = {
            "batch_id": batch_id,
            "event_count": len(entries),
            "events": entries,
            "timestamp": iso(timezone.now()),
        }
        # The same encoder as webhooks: a bad value stored before the strict parser
        # goes out escaped, as it does there, instead of failing the batch.
        return cls(batch_id=batch_id, entries=entries, body=outbound.encode_body(envelope), end_id=end_id)


@dataclass
class Result:
    delivered: bool
    attempts: int
    error: str = ""
    http_status: int | None = None
    stopped: bool = False  # the run ended before this batch finished: not an outcome


def entry_of(row: Mapping[str, Any]) -> dict:
    """An event as AgentField's forwarder sends it: ids and status in `data`, the event's own data under `payload`.

    A collector written for AgentField reads `data.execution_id` (execution
    events) or `data.node_id` (node events) and `data.payload`.
    """
    payload = row["data"]
    if row["source"] == "execution":
        data = {
            "execution_id": row["execution_id"], "workflow_id": row["workflow_id"],
            "agent_node_id": row["agent_node_id"], "status": row["status"],
        }
    elif row["source"] == "node":
        data = {"node_id": row["agent_node_id"], "status": row["status"]}
        if isinstance(payload, dict):
            data.update({k: payload[k] for k in ("old_status", "new_status", "source", "reason") if k in payload})
    else:
        data = {k: row[k] for k in ("execution_id", "status") if row.get(k)}
    data["payload"] = payload
    return {
        "event_id": row["id"],
        "event_type": row["type"],
        "event_source": row["source"],
        "timestamp": iso(row["timestamp"]),
        "data": data,
    }


# How often an attempt on the wire looks at the run's stop.
STOP_CHECK_SECONDS = 0.1


def send(target: Target, batch: Batch, max_attempts: int, stop: threading.Event | None = None) -> Result:
    """POST the batch until 2xx, a final failure, or `max_attempts`; never raises for HTTP trouble.

    The collector is the operator's own service, so unlike webhooks only what
    `outbound.classify` calls RETRY is retried: a 3xx or another 4xx says the
    collector will not take this batch as it is, and it goes to the dead letters.
    """
    request = outbound.Request(
        target.url, batch.body, batch.batch_id, [target.secret] if target.secret else [],
        target.headers, settings.OBSERVABILITY_TIMEOUT,
    )
    attempts = 0
    while True:
        outcome = _attempt(request, stop)
        if outcome is None:  # stopped: not an outcome, and not acknowledged (the next run sends it again)
            return Result(False, attempts, error="the forwarder stopped", stopped=True)
        attempts += 1
        code = outcome.status
        if outcome.ok:
            return Result(True, attempts, http_status=code)
        error = f"HTTP {code}: {outcome.body[:200]}".strip() if code is not None else outcome.describe()
        delay = None
        if outbound.classify(outcome) == outbound.Verdict.RETRY:
            delay = backoff.delay_for(attempts, settings.OBSERVABILITY_RETRY_SCHEDULE)
        if delay is None or attempts >= max_attempts:
            return Result(False, attempts, error=error, http_status=code)
        delay = backoff.honour_retry_after(outcome.retry_after, delay)
        if stop is not None:
            if stop.wait(delay):
                return Result(False, attempts, error=error, http_status=code, stopped=True)
        else:
            time.sleep(delay)


def _attempt(request: outbound.Request, stop: threading.Event | None) -> outbound.Outcome | None:
    """One attempt, or None when `stop` is set before or while it runs (the request is then cut off)."""
    if stop is None:
        return outbound.client().send(request)
    if stop.is_set():
        return None
    pending = outbound.client().submit(request)
    while True:
        try:
            return pending.result(timeout=STOP_CHECK_SECONDS)
        except concurrent.futures.TimeoutError:
            if stop.is_set():
                pending.cancel()
                return None


def attempts_allowed() -> int:
    """The first attempt plus one per entry of the retry schedule (3 by default)."""
    return len(settings.OBSERVABILITY_RETRY_SCHEDULE) + 1
