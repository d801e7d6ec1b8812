"""Calling agents: claim an execution under a lease, POST to the agent, record the outcome.

The Execution row is the queue. A worker claims it with a compare-and-set that
takes a lease; a worker killed mid-call leaves the lease to lapse, and the sweeper
hands the execution out again (`requeue_lapsed`). django-q2 only carries the
wake-up, so a lost or duplicated task changes nothing: only one claim wins.
"""

import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import requests
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from urllib3.util.retry import Retry

from agentfield_site.lib import safe_http, strict_json, tasks

from . import lifecycle
from .models import ACTIVE, AgentNode, Execution

log = logging.getLogger(__name__)

TASK = "executions.tasks.dispatch_execution"
CANCEL_TIMEOUT = 2.0
CANCEL_NOTICES_TASK = "executions.tasks.send_cancel_notices"
# A bulk cancel's notices in flight at once: a dead agent costs its timeout per
# notice, so they overlap, but one task must not open a connection per execution.
CANCEL_NOTICE_CONCURRENCY = 8
# How much of an agent's error body is quoted back to callers (error_details.body).
ERROR_BODY_LIMIT = 2048
_local = threading.local()


def _session() -> requests.Session:
    """One keep-alive session per thread: agents are called over pooled connections.

    The webhooks' guard with its own allow-list (AGENT_ALLOWED_HOSTS, loopback by
    default): every connection's resolved address is checked when it is made, and
    redirects are never followed, so a node's base_url cannot aim the platform at
    an address the deployment did not allow.

    Failed connection attempts are retried briefly (0, 0.5, 1 s): an agent that has
    just registered may not listen yet (the SDK registers before its server binds),
    and a request that never connected cannot have reached the agent twice.
    """
    allowed = tuple(settings.AGENT_ALLOWED_HOSTS)
    session = getattr(_local, "session", None)
    if session is None or _local.allowed != allowed:
        retry = Retry(total=None, connect=3, read=0, redirect=0, status=0, other=0, backoff_factor=0.25)
        session = safe_http.new_session(pool_size=4, allowed_hosts=allowed, max_retries=retry)
        _local.session, _local.allowed = session, allowed
    return session


def enqueue(execution_id: str) -> None:
    """Ask a worker to dispatch `execution_id` once the current transaction commits."""

    def send() -> None:
        tasks.enqueue(TASK, execution_id, cluster=settings.DISPATCH_CLUSTER, name=f"dispatch {execution_id}")

    if tasks.in_database(settings.DISPATCH_CLUSTER):
        # The broker is this database: the task row commits with the execution, in
        # the same transaction (one write fewer, and never one without the other).
        send()
        return
    # robust: a broker outage must not fail the request that already committed the
    # execution; its dispatch lease lapses and the sweeper enqueues it again.
    transaction.on_commit(send, robust=True)


def _lease_until():
    return timezone.now() + timedelta(seconds=settings.DISPATCH_LEASE_SECONDS)


def claim(execution_id: str, *, or_oldest: bool = False) -> tuple[Execution, str] | None:
    """Take the dispatch lease; (execution, token) for the winner, None otherwise.

    With `or_oldest`, a task whose own execution is already taken (a duplicate
    wake-up, or a requeue that raced the original task) takes the oldest execution
    still waiting instead: a task is a wake-up, not a reservation, so none that a
    worker runs is wasted while a backlog lasts.
    """
    token = uuid.uuid4().hex
    with transaction.atomic():
        won = _take(execution_id, token)
        if not won and or_oldest:
            oldest = _oldest_queued()
            won = oldest is not None and _take(oldest, token)
            execution_id = oldest
        if not won:
            return None
        execution = Execution.objects.get(pk=execution_id)
        if execution.status in ("pending", "queued"):
            execution = lifecycle.transition(execution_id, "running").execution
    return execution, token


def _take(execution_id: str, token: str) -> bool:
    return bool(
        Execution.objects.filter(
            pk=execution_id, dispatch_state=Execution.Dispatch.QUEUED, status__in=ACTIVE
        ).update(
            dispatch_state=Execution.Dispatch.IN_FLIGHT,
            dispatch_token=token,
            dispatch_lease_until=_lease_until(),
            dispatch_attempts=F("dispatch_attempts") + 1,
        )
    )


def _oldest_queued() -> str | None:
    waiting = Execution.objects.filter(dispatch_state=Execution.Dispatch.QUEUED, status__in=ACTIVE)
    if connection.vendor == "postgresql":
        # Two workers looking at once take two different rows instead of queueing.
        waiting = waiting.select_for_update(skip_locked=True)
    return waiting.order_by("created_at").values_list("pk", flat=True).first()


def _headers(execution: Execution) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-Execution-ID": execution.id,
        "X-Run-ID": execution.run_id,
        "X-Workflow-ID": execution.workflow_id,
    }
    for name, value in (
        ("X-Parent-Execution-ID", execution.parent_execution_id),
        ("X-Session-ID", execution.session_id),
        ("X-Actor-ID", execution.actor_id),
    ):
        if value:
            headers[name] = value
    return headers


def agent_url(node: AgentNode, execution: Execution) -> str:
    kind = "reasoners" if execution.type == "reasoner" else "skills"
    return f"{node.base_url.rstrip('/')}/{kind}/{execution.reasoner_id}"


def run(execution_id: str, *, or_oldest: bool = False) -> str:
    """Dispatch one execution if this worker wins the claim; returns what happened.

    The worker's task passes `or_oldest` (see `claim`); the sync API dispatches
    its own execution only.
    """
    claimed = claim(execution_id, or_oldest=or_oldest)
    if claimed is None:
        return "not_claimed"
    execution, token = claimed
    node = AgentNode.objects.filter(pk=execution.agent_node_id).first()
    if node is None:
        _fail(execution, token, "not_found", f"Agent node {execution.agent_node_id!r} is no longer registered.")
        return "failed"
    timeout = settings.AGENT_CALL_TIMEOUT
    try:
        response = _session().post(
            agent_url(node, execution),
            data=json.dumps(execution.input).encode(),
            headers=_headers(execution),
            timeout=(min(5.0, timeout), timeout),
            allow_redirects=False,
            stream=True,
        )
    except safe_http.UnsafeURL as exc:
        _fail(execution, token, "agent_unreachable", f"The agent's address is not allowed: {exc}.",
              {"detail": "blocked by AGENT_ALLOWED_HOSTS"})
        return "failed"
    except requests.Timeout:
        _fail(execution, token, "agent_timeout", f"The agent did not answer within {timeout:g}s.")
        return "failed"
    except requests.RequestException as exc:
        _fail(execution, token, "agent_unreachable", f"The agent could not be reached: {exc.__class__.__name__}.",
              {"detail": str(exc)[:500]})
        return "failed"
    try:
        return _record_response(execution, token, response)
    finally:
        # Read what is left of a short answer (a 202's body) first: a socket closed with
        # bytes unread sends the agent a reset, which its server reports as an error.
        _read_capped(response, ERROR_BODY_LIMIT)
        response.close()


def _read_capped(response: requests.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether there was more (never the whole of a huge body)."""
    try:
        data = response.raw.read(limit + 1, decode_content=True) or b""
    except (requests.RequestException, OSError, ValueError) as exc:
        log.info("reading an agent's body failed: %s", exc)
        return b"", False
    return data[:limit], len(data) > limit


def _quoted(data: bytes) -> str:
    """An agent's body as quoted back to callers: UTF-8, at most ERROR_BODY_LIMIT bytes.

    A NUL becomes U+FFFD: PostgreSQL's text and jsonb refuse it, and the quote is stored.
    """
    return data[:ERROR_BODY_LIMIT].decode("utf-8", errors="ignore").replace("\x00", strict_json.REPLACEMENT)


def _record_response(execution: Execution, token: str, response: requests.Response) -> str:
    if response.status_code == 202:
        # Conditional on IN_FLIGHT: a callback that already finished the execution
        # (agents may report before their 202 reaches us) has set DONE, which stays.
        Execution.objects.filter(
            pk=execution.id, dispatch_token=token, dispatch_state=Execution.Dispatch.IN_FLIGHT
        ).update(dispatch_state=Execution.Dispatch.ACCEPTED, dispatch_lease_until=None)
        return "accepted"
    if 200 <= response.status_code < 300:
        # A result is held to the same bound as a status callback's body.
        data, more = _read_capped(response, settings.MAX_BODY_BYTES)
        if more:
            _fail(execution, token, "bad_response",
                  f"The agent's result is larger than {settings.MAX_BODY_BYTES} bytes.",
                  {"http_status": response.status_code})
            return "failed"
        # Held to the API's rules too: a result the database or a reader cannot take
        # (NaN, a lone surrogate, a NUL, deep nesting) would fail the write that
        # finishes the execution, and leave it running to be dispatched again.
        try:
            result = strict_json.loads(data) if data else None
        except strict_json.InvalidJson as exc:
            _fail(execution, token, "bad_response", f"The agent answered 200 with a body that is not valid JSON: {exc}.",
                  {"http_status": response.status_code, "body": _quoted(data)})
            return "failed"
        _finish(execution.id, "succeeded", result=result)
        return "succeeded"
    data, _ = _read_capped(response, ERROR_BODY_LIMIT)
    message = _error_message(data, response.reason)
    _fail(execution, token, "agent_error", f"The agent answered {response.status_code}: {message}",
          {"http_status": response.status_code, "body": _quoted(data)})
    return "failed"


def _error_message(data: bytes, reason: str | None) -> str:
    try:
        body = strict_json.loads(data)
    except strict_json.InvalidJson:
        return _quoted(data)[:300] or reason or "no body"
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if body.get(key):
                return str(body[key])[:300]
    return json.dumps(body)[:300]


def _finish(execution_id: str, status: str, **fields) -> None:
    try:
        lifecycle.transition(execution_id, status, **fields)
    except lifecycle.InvalidTransition as exc:
        # The agent's own callback (or a cancel) got there first: that outcome stands.
        log.info("dispatch outcome for %s dropped: %s", execution_id, exc)


def _fail(execution: Execution, token: str, category: str, message: str, details: dict | None = None) -> None:
    with transaction.atomic():
        # A newer claim (our lease lapsed while we waited) owns the outcome now.
        if not Execution.objects.filter(pk=execution.id, dispatch_token=token).exists():
            return
        _finish(
            execution.id, "failed", error=message, error_category=category,
            error_details={"category": category, **(details or {})},
        )


def requeue_lapsed() -> int:
    """Sweeper tick: executions whose dispatch lease lapsed without an outcome go out again.

    A call in flight whose lease lapsed (its worker died) goes out again at once.
    A row still queued may simply be waiting behind a backlog in the broker: each
    look doubles the time until the next (its age, at least one lease, at most ten),
    so a backlog is not multiplied by duplicate wake-ups while its tasks are merely
    late, and a task the broker really lost is still replaced.
    """
    now = timezone.now()
    lease = timedelta(seconds=settings.DISPATCH_LEASE_SECONDS)
    lapsed = Execution.objects.filter(
        dispatch_state__in=(Execution.Dispatch.QUEUED, Execution.Dispatch.IN_FLIGHT),
        dispatch_lease_until__lt=now,
        status__in=ACTIVE,
    ).values_list("id", "dispatch_token", "dispatch_lease_until", "dispatch_state", "created_at")[:200]
    count = 0
    for execution_id, token, lapsed_at, state, created_at in lapsed:
        wait = lease if state == Execution.Dispatch.IN_FLIGHT else min(max(lease, now - created_at), 10 * lease)
        # Conditional on the lease we saw, so two sweepers never both requeue.
        if Execution.objects.filter(pk=execution_id, dispatch_token=token, dispatch_lease_until=lapsed_at).update(
            dispatch_state=Execution.Dispatch.QUEUED, dispatch_lease_until=now + wait
        ):
            enqueue(execution_id)
            count += 1
    return count


def expire_stale() -> int:
    """Sweeper tick: executions with no terminal status after EXECUTION_TIMEOUT time out."""
    cutoff = timezone.now() - timedelta(seconds=settings.EXECUTION_TIMEOUT)
    count = 0
    for execution_id in Execution.objects.filter(status__in=ACTIVE, created_at__lt=cutoff).values_list(
        "id", flat=True
    )[:200]:
        try:
            change = lifecycle.transition(
                execution_id, "timeout", system=True,
                error=f"No terminal status within {settings.EXECUTION_TIMEOUT:g}s.",
                error_category="agent_timeout",
                status_reason="execution_timeout",
            )
        except lifecycle.InvalidTransition:
            continue
        count += change.changed
    return count


def _send_cancel_notice(execution_id: str, base_url: str) -> None:
    # The same guarded session as the call itself: AGENT_ALLOWED_HOSTS, no redirects.
    try:
        _session().post(
            f"{base_url.rstrip('/')}/_internal/executions/{execution_id}/cancel",
            data=b"{}",
            headers={"Content-Type": "application/json", "X-Execution-ID": execution_id},
            timeout=CANCEL_TIMEOUT,
            allow_redirects=False,
        ).close()
    except (requests.RequestException, safe_http.UnsafeURL) as exc:
        log.info("cancel notice for %s not delivered: %s", execution_id, exc)


def notify_cancel(execution_id: str, base_url: str) -> None:
    """Best effort: tell the agent in a background thread; its answer changes nothing."""
    threading.Thread(
        target=_send_cancel_notice, args=(execution_id, base_url), name=f"cancel-{execution_id}", daemon=True
    ).start()


def queue_cancel_notices(notices: list[tuple[str, str]]) -> None:
    """Tell the agents of many cancelled executions from one queued task, not a thread each."""
    if notices:
        tasks.enqueue(
            CANCEL_NOTICES_TASK, notices, cluster=settings.DISPATCH_CLUSTER, name=f"cancel notices ({len(notices)})"
        )


def send_cancel_notices(notices: list[tuple[str, str]]) -> None:
    """The task: (execution_id, base_url) notices, a few at a time (best effort, like `notify_cancel`)."""
    with ThreadPoolExecutor(max_workers=CANCEL_NOTICE_CONCURRENCY, thread_name_prefix="cancel") as pool:
        list(pool.map(lambda notice: _send_cancel_notice(*notice), notices))
