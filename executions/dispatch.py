"""Calling agents: claim an execution under a lease, POST to the agent, record the outcome.

The Execution row is the queue. A worker claims it with a compare-and-set that
takes a lease; a worker killed mid-call leaves the lease to lapse, and the sweeper
hands the execution out again (`requeue_lapsed`). django-q2 only carries the
wake-up, so a lost or duplicated task changes nothing: only one claim wins.

A call does not hold a worker process: the task (`take`) hands claimed executions
to the process's call threads (AGENT_CALLS_PER_WORKER) and returns, and a thread
whose call has ended claims the next waiting execution itself. No more than
AGENT_MAX_CALLS_PER_NODE calls are in flight to one node, nor
AGENT_MAX_CALLS_PER_KEY for one key's executions, across every worker, and a
claim passes over those at their cap: an agent that hangs (or is merely slow)
holds at most its own share of the threads, and everyone else's executions go
out beside it instead of waiting for its timeouts.
"""

import json
import logging
import os
import queue
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from functools import partial

import requests
import urllib3
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from urllib3.util.retry import Retry

from agentfield_site.lib import safe_http, strict_json, tasks
from agentfield_site.lib.logs import Repeated
from agentfield_site.lib.sqlite_writer import one_writer

from . import lifecycle
from .models import ACTIVE, AgentNode, Execution

log = logging.getLogger(__name__)
_enqueue_failed = Repeated(log, "could not queue a dispatch; the sweeper wakes a worker for it", logging.ERROR)

TASK = "executions.tasks.dispatch_execution"
CANCEL_TIMEOUT = 2.0
CANCEL_NOTICES_TASK = "executions.tasks.send_cancel_notices"
# A bulk cancel's notices in flight at once: a dead agent costs its timeout per
# notice, so they overlap, but one task must not open a connection per execution.
CANCEL_NOTICE_CONCURRENCY = 8
# How much of an agent's error body is quoted back to callers (error_details.body).
ERROR_BODY_LIMIT = 2048
# Claims take a transaction-level advisory lock on PostgreSQL, so that the
# per-node and per-key in-flight counts they read cannot be raced by another claim.
_CLAIM_LOCK_KEY = 0x4146_4443  # "AFDC"
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

    if connection.in_atomic_block and tasks.in_database(settings.DISPATCH_CLUSTER):
        # The broker is this database: the task row commits with the execution, in
        # the same transaction (one write fewer, and never one without the other).
        send()
        return
    # A broker outage must not fail the request that already committed the execution
    # (outside a transaction, as a sync call's hand-over, it runs at once); the
    # sweeper wakes a worker for it (`wake_waiting`).
    transaction.on_commit(partial(_or_logged, send))


def _or_logged(send: Callable[[], None]) -> None:
    try:
        send()
    except Exception:  # noqa: BLE001 - see `enqueue`
        _enqueue_failed.log()


def _lease_until():
    return timezone.now() + timedelta(seconds=settings.DISPATCH_LEASE_SECONDS)


def claim(execution_id: str) -> tuple[Execution, str] | None:
    """Take the dispatch lease of `execution_id` if it may be called now; (execution, token), or None.

    The sync API's path: it calls its own execution's agent on its own thread.
    At a cap it leaves the execution waiting for a worker's call thread, so a
    hung agent cannot take the web process's threads either.
    """
    return _claim(execution_id, others=False)


def claim_next(preferred: str | None = None) -> tuple[Execution, str] | None:
    """Take the lease of the next execution a worker may call now; (execution, token), or None.

    `preferred` (the task's own execution) if it may be called now, else the
    oldest waiting execution that may: a task is a wake-up, not a reservation.
    """
    if preferred is None and not _claimable().exists():
        # Read before locking: call threads look each time a call ends, and on SQLite the lock stops every writer.
        return None
    return _claim(preferred, others=True)


def _claim(preferred: str | None, others: bool) -> tuple[Execution, str] | None:
    """`preferred` if it may be called now, else (with `others`) the next waiting execution that may.

    One may while fewer than AGENT_MAX_CALLS_PER_NODE calls to its node, and
    fewer than AGENT_MAX_CALLS_PER_KEY of its owner's executions, are in flight.
    The next is the oldest of a key with no call in flight, else the oldest: a
    key that submits now and then is not queued behind another's backlog on a
    node they share. The counts are read and the lease taken under one lock
    (PostgreSQL's advisory lock, SQLite's write lock), so the caps hold across
    every worker and web process.
    """
    token = uuid.uuid4().hex
    with one_writer(), transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CLAIM_LOCK_KEY])
        nodes, owners = calls_in_flight()
        open_to = _claimable(nodes, owners)
        if preferred is not None and _take(open_to.filter(pk=preferred), token):
            return _started(preferred), token
        if not others:
            return None
        in_order = open_to.order_by("created_at", "id").values_list("pk", flat=True)
        chosen = in_order.exclude(owner_id__in=list(owners)).first() if owners else None
        chosen = chosen or in_order.first()
        if chosen is None or not _take(Execution.objects.filter(pk=chosen), token):
            return None
        return _started(chosen), token


def _claimable(nodes: Counter | None = None, owners: Counter | None = None):
    """Waiting executions that may be called now: their node and their owner's key are below their caps.

    `nodes` and `owners` are `calls_in_flight()`, when the caller has read them.
    """
    if nodes is None or owners is None:
        nodes, owners = calls_in_flight()
    node_cap, key_cap = max(1, settings.AGENT_MAX_CALLS_PER_NODE), max(1, settings.AGENT_MAX_CALLS_PER_KEY)
    return Execution.objects.filter(dispatch_state=Execution.Dispatch.QUEUED, status__in=ACTIVE).exclude(
        agent_node_id__in=[node for node, calls in nodes.items() if calls >= node_cap]
    ).exclude(owner_id__in=[owner for owner, calls in owners.items() if calls >= key_cap])


def calling() -> Q:
    """Executions whose agent call goes on now.

    Claimed and not ended, or ended (a cancel, the agent's callback) while the call
    goes on, until it returns or its lease lapses (its worker died).
    """
    return Q(dispatch_state=Execution.Dispatch.IN_FLIGHT) | Q(
        dispatch_state=Execution.Dispatch.DONE, dispatch_lease_until__gt=timezone.now()
    )


def calls_in_flight() -> tuple[Counter, Counter]:
    """Agent calls going on now, by node and by owner (key id; executions without one are left out)."""
    nodes, owners = Counter(), Counter()
    for node, owner, calls in Execution.objects.filter(calling()).values_list("agent_node_id", "owner_id").annotate(
        calls=Count("id")
    ):
        nodes[node] += calls
        if owner is not None:
            owners[owner] += calls
    return nodes, owners


def _take(rows, token: str) -> bool:
    return bool(
        rows.filter(dispatch_state=Execution.Dispatch.QUEUED, status__in=ACTIVE).update(
            dispatch_state=Execution.Dispatch.IN_FLIGHT,
            dispatch_token=token,
            dispatch_lease_until=_lease_until(),
            dispatch_attempts=F("dispatch_attempts") + 1,
        )
    )


def _started(execution_id: str) -> Execution:
    execution = Execution.objects.get(pk=execution_id)
    if execution.status in ("pending", "queued"):
        execution = lifecycle.transition(execution_id, "running").execution
    return execution


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


def run(execution_id: str) -> str:
    """Call the agent of `execution_id` on this thread if the claim is won (the sync API); what happened."""
    claimed = claim(execution_id)
    if claimed is None:
        return "not_claimed"
    return call(*claimed)


def call(execution: Execution, token: str) -> str:
    """POST a claimed execution to its agent and record the outcome; returns what happened."""
    node = AgentNode.objects.select_related("owner").filter(pk=execution.agent_node_id).first()
    if node is None:
        _fail(execution, token, "not_found", f"Agent node {execution.agent_node_id!r} is no longer registered.")
        return "failed"
    if node.owner is not None and node.owner.revoked_at is not None:
        # Its agent could take the call but never report the result (its key is refused).
        _fail(execution, token, "agent_unreachable",
              f"Agent node {node.pk!r} is unavailable: the API key it registered with was revoked.")
        return "failed"
    if not connection.in_atomic_block:
        # No database connection is held while the agent thinks (up to AGENT_CALL_TIMEOUT).
        connection.close()
    timeout = settings.AGENT_CALL_TIMEOUT
    # The read timeout bounds each read, the deadline the whole call: an agent that
    # trickles its answer a byte at a time must not hold the call (and its thread,
    # and its node's share) past its lease, when the execution would go out again.
    with safe_http.deadline(timeout) as deadline:
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
        except requests.RequestException as exc:
            if deadline.expired or isinstance(exc, requests.Timeout):
                _fail(execution, token, "agent_timeout", f"The agent did not answer within {timeout:g}s.")
                return "failed"
            _fail(execution, token, "agent_unreachable", f"The agent could not be reached: {exc.__class__.__name__}.",
                  {"detail": str(exc)[:500]})
            return "failed"
        try:
            return _record_response(execution, token, response, deadline)
        finally:
            # Read what is left of a short answer (a 202's body) first: a socket closed with
            # bytes unread sends the agent a reset, which its server reports as an error.
            _read_capped(response, ERROR_BODY_LIMIT)
            response.close()


# --- the workers' call threads -----------------------------------------------------

_free_threads: dict[int, threading.BoundedSemaphore] = {}  # by process id: django-q2 forks its workers
_free_threads_lock = threading.Lock()


def _this_process_threads() -> threading.BoundedSemaphore:
    with _free_threads_lock:
        pid = os.getpid()
        if pid not in _free_threads:
            _free_threads[pid] = threading.BoundedSemaphore(max(1, settings.AGENT_CALLS_PER_WORKER))
        return _free_threads[pid]


def take(execution_id: str | None = None) -> int:
    """The dispatch task: start waiting executions' calls on this process's free call threads; how many.

    Returns at once, the calls running on: a worker process is never held by an
    agent that takes its time. Each call thread, once its call has ended, claims
    the next waiting execution itself (`_keep_calling`), so a node held back by
    its cap is called as soon as one of its calls ends, without another wake-up.
    """
    free = _this_process_threads()
    started = 0
    while free.acquire(blocking=False):
        try:
            claimed = claim_next(execution_id)
        except BaseException:
            free.release()
            raise
        execution_id = None
        if claimed is None:
            free.release()
            break
        try:
            # Not a daemon: a worker that stops (or that django-q2 recycles) waits for its calls.
            threading.Thread(target=_keep_calling, args=(free, claimed), name="agent-call").start()
        except BaseException:  # no thread (the process is out of them): its lease lapses, the sweeper requeues it
            free.release()
            raise
        started += 1
    return started


def _keep_calling(free: threading.BoundedSemaphore, claimed: tuple[Execution, str] | None) -> None:
    """A call thread: call, then claim the next waiting execution, until none is left or the process stops."""
    try:
        while claimed is not None:
            try:
                call(*claimed)
            except Exception:  # its lease lapses and the sweeper hands the execution out again
                log.exception("dispatching %s failed", claimed[0].id)
            # The main thread has ended: the process is stopping, and waits for this call only.
            if not threading.main_thread().is_alive():
                break
            claimed = claim_next()
    except Exception:  # claiming failed (the database went away): the sweeper's wake-up finds the rest
        log.exception("claiming the next execution failed")
    finally:
        free.release()
        connection.close()
        if session := getattr(_local, "session", None):
            session.close()


def wake_waiting() -> None:
    """Sweeper tick: a wake-up when executions have waited a while that a call thread could take now.

    Their own wake-ups found every thread busy or a cap reached, and a
    call that ends takes the next execution itself; this covers what is left
    (a node's cap held by sync calls, a wake-up the broker lost).
    """
    a_while_ago = timezone.now() - timedelta(seconds=1)
    if _claimable().filter(created_at__lt=a_while_ago).exists():
        tasks.enqueue(TASK, None, cluster=settings.DISPATCH_CLUSTER, name="dispatch waiting executions")


class _BodyBroken(Exception):
    """The agent's body could not be read to its end: cut off, too slow, or undecodable."""


def _read_capped(response: requests.Response, limit: int, whole: bool = False) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether there was more (never the whole of a huge body).

    With `whole`, a body that cannot be read (cut off, timed out) raises `_BodyBroken`:
    it is the result, and half of one is none. Otherwise it reads as empty.
    """
    try:
        data = response.raw.read(limit + 1, decode_content=True) or b""
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        log.info("reading an agent's body failed: %s", exc)
        if whole:
            raise _BodyBroken(exc) from exc
        return b"", False
    return data[:limit], len(data) > limit


def _quoted(data: bytes) -> str:
    """An agent's body as quoted back to callers: UTF-8, at most ERROR_BODY_LIMIT bytes.

    A NUL becomes U+FFFD: PostgreSQL's text and jsonb refuse it, and the quote is stored.
    """
    return data[:ERROR_BODY_LIMIT].decode("utf-8", errors="ignore").replace("\x00", strict_json.REPLACEMENT)


def _record_response(execution: Execution, token: str, response: requests.Response, deadline) -> str:
    if response.status_code == 202:
        # Conditional on IN_FLIGHT: a callback that already finished the execution
        # (agents may report before their 202 reaches us) has set DONE, which stays.
        if not Execution.objects.filter(
            pk=execution.id, dispatch_token=token, dispatch_state=Execution.Dispatch.IN_FLIGHT
        ).update(dispatch_state=Execution.Dispatch.ACCEPTED, dispatch_lease_until=None):
            _release(execution.id, token)
        return "accepted"
    if 200 <= response.status_code < 300:
        # A result is held to the same bound as a status callback's body.
        try:
            data, more = _read_capped(response, settings.MAX_BODY_BYTES, whole=True)
        except _BodyBroken as exc:
            # Escaping instead, it left the execution in flight, to be sent again once its lease lapsed.
            timed_out = deadline.expired or isinstance(exc.__cause__, (urllib3.exceptions.TimeoutError, TimeoutError))
            if timed_out:
                _fail(execution, token, "agent_timeout",
                      f"The agent did not finish its answer within {settings.AGENT_CALL_TIMEOUT:g}s.",
                      {"http_status": response.status_code})
            else:
                _fail(execution, token, "bad_response", "The agent's answer broke off before its end.",
                      {"http_status": response.status_code, "detail": str(exc.__cause__)[:500]})
            return "failed"
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
        _finish(execution.id, token, "succeeded", result=result)
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


def _finish(execution_id: str, token: str, status: str, **fields) -> None:
    try:
        change = lifecycle.transition(execution_id, status, ending_call=token, **fields)
    except lifecycle.InvalidTransition as exc:
        # The agent's own callback (or a cancel) got there first: that outcome stands.
        log.info("dispatch outcome for %s dropped: %s", execution_id, exc)
        _release(execution_id, token)
        return
    if not change.changed:
        _release(execution_id, token)


def _release(execution_id: str, token: str) -> None:
    """The call ended after its execution did (a cancel, the agent's callback): it no longer counts against any cap."""
    Execution.objects.filter(
        pk=execution_id, dispatch_token=token, dispatch_state=Execution.Dispatch.DONE, dispatch_lease_until__isnull=False
    ).update(dispatch_lease_until=None)


def _fail(execution: Execution, token: str, category: str, message: str, details: dict | None = None) -> None:
    with transaction.atomic():
        # A newer claim (our lease lapsed while we waited) owns the outcome now.
        if not Execution.objects.filter(pk=execution.id, dispatch_token=token).exists():
            return
        _finish(
            execution.id, token, "failed", error=message, error_category=category,
            error_details={"category": category, **(details or {})},
        )


def requeue_lapsed() -> int:
    """Sweeper tick: calls whose dispatch lease lapsed without an outcome (their worker died) go out again."""
    now = timezone.now()
    lapsed = Execution.objects.filter(
        dispatch_state=Execution.Dispatch.IN_FLIGHT, dispatch_lease_until__lt=now, status__in=ACTIVE
    ).values_list("id", "dispatch_token")[:200]
    count = 0
    for execution_id, token in lapsed:
        # Conditional on the lease we saw, so two sweepers never both requeue.
        if Execution.objects.filter(pk=execution_id, dispatch_token=token, dispatch_state=Execution.Dispatch.IN_FLIGHT).update(
            dispatch_state=Execution.Dispatch.QUEUED, dispatch_lease_until=None
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
    # The same guarded session as the call itself: AGENT_ALLOWED_HOSTS, no redirects;
    # the whole exchange within CANCEL_TIMEOUT (an agent trickling its answer a byte at
    # a time met every read's timeout and held its thread for as long as it liked).
    try:
        with safe_http.deadline(CANCEL_TIMEOUT):
            _session().post(
                f"{base_url.rstrip('/')}/_internal/executions/{execution_id}/cancel",
                data=b"{}",
                headers={"Content-Type": "application/json", "X-Execution-ID": execution_id},
                timeout=CANCEL_TIMEOUT,
                allow_redirects=False,
            ).close()
    except (requests.RequestException, safe_http.UnsafeURL) as exc:
        log.info("cancel notice for %s not delivered: %s", execution_id, exc)


# The web process's notices of single cancels: a few daemon threads (a stopping
# process does not wait for notices, which are best effort) reading a bounded queue
# (an agent that never answers cannot make it grow without bound: past
# CANCEL_NOTICE_BACKLOG waiting, a notice is dropped and logged). A forked child
# starts threads of its own: they do not survive a fork.
CANCEL_NOTICE_BACKLOG = 1000
_notices: "queue.Queue | None" = None
_notices_pid = 0
_notices_lock = threading.Lock()


def notify_cancel(execution_id: str, base_url: str) -> Future:
    """Best effort: tell the agent in the background; its answer changes nothing. Done when sent (or dropped)."""
    done: Future = Future()
    try:
        _notice_queue().put_nowait((done, execution_id, base_url))
    except queue.Full:
        log.warning("cancel notice for %s dropped: %d notices are waiting", execution_id, CANCEL_NOTICE_BACKLOG)
        done.set_result(None)
    return done


def _notice_queue() -> queue.Queue:
    global _notices, _notices_pid
    with _notices_lock:
        if _notices is None or _notices_pid != os.getpid():
            _notices, _notices_pid = queue.Queue(CANCEL_NOTICE_BACKLOG), os.getpid()
            for n in range(CANCEL_NOTICE_CONCURRENCY):
                threading.Thread(target=_send_notices, args=(_notices,), name=f"cancel-notice-{n}", daemon=True).start()
        return _notices


def _send_notices(notices: queue.Queue) -> None:
    while True:
        done, execution_id, base_url = notices.get()
        try:
            _send_cancel_notice(execution_id, base_url)
        except Exception:  # a bug in one notice must not take a thread from the rest
            log.exception("cancel notice for %s failed", execution_id)
        finally:
            done.set_result(None)


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
