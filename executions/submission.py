"""Accepting an execution: resolve the target, store, enqueue (the API has validated the request).

Nothing is half-written: the row and its `execution.created` event commit together,
and dispatch is enqueued only after that commit.
"""

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agentfield_site.lib.db_threads import run_in, with_fresh_connection
from agentfield_site.lib.sqlite_writer import one_writer
from observability.tail import run_db
from webhooks.completion import validate_webhook

from . import dispatch, lifecycle
from .errors import IdempotencyKeyReused, InvalidTarget, QueueFull, UnknownNode, UnknownTarget
from .models import COMPONENT_ID, AgentNode, Execution, new_run_id, offered_kind

T = TypeVar("T")


@dataclass
class Request:
    """What a caller asked for, from the body and headers (validated by `ExecuteRequestSerializer`)."""

    target: str
    input: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)
    webhook: object = None
    run_id: str = ""
    parent_execution_id: str = ""
    session_id: str = ""
    actor_id: str = ""
    idempotency_key: str = ""
    # Whose execution it is (None: an admin without a key row, or the open API).
    owner_id: int | None = None
    # The key that sent it, whose Idempotency-Keys these are: the owner, or an agent
    # key calling from one of its executions (`ownership.call_owner`).
    submitted_by_id: int | None = None


def parse_target(target: str) -> tuple[str, str]:
    """`node.reasoner_or_skill` -> (node, name); anything else is `InvalidTarget`."""
    node_id, dot, name = target.partition(".")
    if not dot or not COMPONENT_ID.fullmatch(node_id) or not COMPONENT_ID.fullmatch(name):
        raise InvalidTarget(target)
    return node_id, name


def _resolve(target: str) -> tuple[str, str, str]:
    """(node id, reasoner or skill, its kind) of a target the node offers."""
    node_id, name = parse_target(target)
    # Every submit asks: one plain statement, not a queryset compiled each time.
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT reasoners, skills FROM {AgentNode._meta.db_table} WHERE id = %s", [node_id])
        offered = cursor.fetchone()
    if offered is None:
        raise UnknownNode(node_id)
    reasoners, skills = (AgentNode._meta.get_field(f).from_db_value(v, None, connection) for f, v in
                         zip(("reasoners", "skills"), offered, strict=True))
    kind = offered_kind(reasoners, skills, name)
    if kind is None:
        raise UnknownTarget(node_id, name)
    return node_id, name, kind


def _existing_for_key(request: Request) -> Execution | None:
    """The execution its sender made with the request's Idempotency-Key inside the window, if any.

    Each key has its own Idempotency-Keys: another key's use of the same string is
    neither found nor revealed, and cannot block this one. A key replayed with
    another target or input is `IdempotencyKeyReused`, not the earlier execution.
    """
    existing = _twin(request)
    if existing is None:
        return None
    window = timedelta(hours=settings.IDEMPOTENCY_WINDOW_HOURS)
    if existing.created_at >= timezone.now() - window:
        return _same_request(existing, request)
    # Past the window the key is free again: release it from the old execution.
    Execution.objects.filter(pk=existing.pk, idempotency_key=request.idempotency_key).update(idempotency_key="")
    return None


def _twin(request: Request) -> Execution | None:
    return Execution.objects.filter(
        idempotency_key=request.idempotency_key, submitted_by_id=request.submitted_by_id
    ).first()


def _same_request(existing: Execution, request: Request) -> Execution:
    if existing.target != request.target or not same_json(existing.input, request.input):
        raise IdempotencyKeyReused()
    return existing


def same_json(stored: Any, sent: Any) -> bool:
    """Whether a stored JSON value is the one sent, as the database gives it back.

    PostgreSQL's jsonb keeps numbers as exact decimals and writes one with no
    fraction back without an exponent: 1e23 sent comes back as the integer
    100000000000000000000000, which Python holds unequal to the float. A number
    is the same when it is equal, or when the float sent is what the integer stored
    reads as. `true` is never the number 1. Walks a stack, never recursion, whatever the depth.
    """
    stack = [(stored, sent)]
    while stack:
        a, b = stack.pop()
        if isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys():
                return False
            stack.extend((a[k], b[k]) for k in a)
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif isinstance(a, bool) or isinstance(b, bool):
            if a is not b:  # true is not 1, nor 1.0 (Python holds them equal)
                return False
        elif isinstance(a, int) and isinstance(b, float) and not isinstance(a, bool):
            try:
                if float(a) != b:
                    return False
            except OverflowError:
                return False
        elif type(a) in (dict, list) or type(b) in (dict, list) or a != b:
            return False
    return True


# Executions waiting for dispatch as last counted here (the whole queue under None,
# a key's under its id), and until when each count may stand in.
_counted: dict[int | None, tuple[int, float]] = {}
DEPTH_RECOUNT_SECONDS = 1.0
_COUNTED_MAX = 10_000


def _waiting(keys: tuple[int, int | None] | None, limit: int) -> int:
    """Executions waiting for dispatch (all of them, or those one key sent for one owner), up to `limit`.

    Counting reads the waiting rows, on every submit; while fewer than half the
    limit wait, a count up to a second old (plus this process's submits since) is as
    good, since no queue doubles within a second. Near the limit it is exact. (A
    key's count on every submit was 7 % of a web process's time in the submit
    bench, and grew with the key's backlog.)
    """
    now = time.monotonic()
    count, until = _counted.get(keys, (0, 0.0))
    if now >= until or count * 2 >= limit:
        # Counting stops at the limit: a full queue must not make every refusal slower.
        count = _count_all(limit) if keys is None else _count_sent_by(*keys, limit)
        if len(_counted) >= _COUNTED_MAX:
            _counted.clear()
        _counted[keys] = (count, now + DEPTH_RECOUNT_SECONDS)
    return count


def _one_more(keys: tuple[int, int | None] | None) -> None:
    for counted in {None, keys}:
        if counted in _counted:
            count, until = _counted[counted]
            _counted[counted] = (count + 1, until)


def _count_all(limit: int) -> int:
    waiting = Execution.objects.filter(dispatch_state=Execution.Dispatch.QUEUED)
    return waiting.order_by().values("pk")[:limit].count()


def _count_sent_by(sender_id: int, owner_id: int | None, limit: int) -> int:
    """The executions a key sent for one owner that wait for dispatch, up to `limit` (the index of waiting rows by both).

    An agent's calls belong to the client whose workflow made them
    (`ownership.call_owner`). Counted as the client's, one agent filled that
    client's quota and every submit of the client's was refused; counted as the
    agent's alone, one client's workflow filled the agent's quota and its calls
    for every other client were refused. A client's own submits are the pair
    (client, client).

    Waiting is the dispatch state, not the status: an agent may report progress
    (`running`) for an execution of its node that no call has reached yet, and a
    call whose worker died waits again as `running`.

    The state is a literal, as in the index's condition: SQLite uses a partial
    index only for a query that repeats it (with parameters it would read every
    execution the key ever submitted).
    """
    sql = (f"SELECT COUNT(*) FROM (SELECT 1 FROM {Execution._meta.db_table} "
           f"WHERE submitted_by_id = %s AND owner_id {'= %s' if owner_id is not None else 'IS NULL'} "
           f"AND dispatch_state = '{Execution.Dispatch.QUEUED.value}' LIMIT %s) AS waiting")
    with connection.cursor() as cursor:
        cursor.execute(sql, [sender_id, *([owner_id] if owner_id is not None else []), limit])
        return cursor.fetchone()[0]


def submit(request: Request, *, enqueue: bool = True) -> tuple[Execution, bool]:
    """Store a new execution (or find the idempotent twin); returns (execution, created).

    With `enqueue`, a django-q2 task dispatches it (`dispatch.enqueue`: sent after
    commit, or written in the same transaction when the broker is this database);
    the sync API dispatches in its own thread instead.
    """
    node_id, name, kind = _resolve(request.target)
    if request.idempotency_key:
        existing = _existing_for_key(request)
        if existing is not None:
            return existing, False
    limit = settings.EXECUTION_QUEUE_LIMIT
    if _waiting(None, limit) >= limit:
        raise QueueFull(limit)
    # One key's backlog (a burst, or an agent that hangs) must not fill everyone's queue.
    key_limit = settings.EXECUTION_QUEUE_LIMIT_PER_KEY
    keys = (request.submitted_by_id, request.owner_id) if request.submitted_by_id is not None else None
    if keys is not None and _waiting(keys, key_limit) >= key_limit:
        raise QueueFull(key_limit, of_this_key=True)
    hook, hook_error = (None, None)
    if request.webhook is not None:
        hook, hook_error = validate_webhook(request.webhook)
    now = timezone.now()
    run_id = request.run_id or new_run_id()
    execution = Execution(
        run_id=run_id,
        workflow_id=run_id,
        parent_execution_id=request.parent_execution_id,
        session_id=request.session_id,
        actor_id=request.actor_id,
        target=request.target,
        type=kind,
        agent_node_id=node_id,
        reasoner_id=name,
        input=request.input,
        context=request.context,
        status="queued",
        created_at=now,
        enqueued_at=now,
        updated_at=now,
        idempotency_key=request.idempotency_key,
        owner_id=request.owner_id,
        submitted_by_id=request.submitted_by_id,
        webhook_registered=hook is not None,
        webhook_url=hook["url"] if hook else "",
        webhook_secret=(hook.get("secret") or "") if hook else "",
        webhook_headers=(hook.get("headers") or {}) if hook else {},
        webhook_error=(hook_error or "")[:500],
        # A task that never runs (the broker lost it, the process died before
        # enqueueing) is made up for by the sweeper (`dispatch.wake_waiting`).
        dispatch_state=Execution.Dispatch.QUEUED,
    )
    try:
        with one_writer(), transaction.atomic():
            lifecycle.record_created(execution)
            if enqueue:
                dispatch.enqueue(execution.id)
    except IntegrityError:
        # Two requests of one key raced with one Idempotency-Key: the other one won.
        existing = _twin(request) if request.idempotency_key else None
        if existing is not None:
            return _same_request(existing, request), False
        raise
    _one_more(keys)
    return execution, True


# The sync API's own threads for its submissions. Bounded, so a crowd of sync
# callers queues here (on the event loop) instead of opening a thread and a
# database connection each.
_sync_pool = ThreadPoolExecutor(max_workers=settings.MAX_CONCURRENT_REQUESTS, thread_name_prefix="sync-execute")
# ... and for its calls to agents, apart: calls to agents that hang must not hold
# the threads every sync caller's submission needs. A call that finds them all busy
# for HAND_OVER_AFTER seconds is handed to the workers' call threads as well
# (`wait_for_outcome`).
_call_threads = max(1, settings.MAX_CONCURRENT_REQUESTS // 2)
_call_pool = ThreadPoolExecutor(max_workers=_call_threads, thread_name_prefix="sync-call")
_calls_free = threading.BoundedSemaphore(_call_threads)
HAND_OVER_AFTER = 1.0


async def on_sync_pool(fn: Callable[..., T], *args: Any) -> T:
    """Run a synchronous function (a submission) on the sync API's pool."""
    return await run_in(_sync_pool, fn, *args)


async def _call_here(execution_id: str) -> None:
    """Call the agent on one of this process's call threads (the caller holds one of `_calls_free`)."""
    # The thread is free when its call has ended, not when this coroutine does: a sync
    # caller that goes away cancels the waiting here, and the call goes on.
    call = _call_pool.submit(with_fresh_connection, dispatch.run, execution_id)
    call.add_done_callback(lambda _: _calls_free.release())  # also when cancelled before it started
    await asyncio.wrap_future(call)


def _read(execution_id: str) -> Execution:
    return Execution.objects.get(pk=execution_id)


async def wait_for_outcome(execution_id: str, created: bool, deadline: float) -> Execution:
    """The sync API: call the agent, then wait for an outcome, on the event loop.

    Returns the execution as it stands when it is terminal or `deadline`
    (time.monotonic) has passed. While it waits, nothing is held but a coroutine.
    The agent is called on this process's call threads (`dispatch.run`) as soon
    as one is free: calls that answer at once free theirs in milliseconds, so a
    burst waits its turn. Threads held by agents that hang stay busy: after
    HAND_OVER_AFTER the execution is also handed to the workers, and whichever
    comes first calls it (the claim lets one only). Once called, the row is
    re-read on the streams' pool every 20 to 250 ms. If this process dies
    mid-call, the dispatch lease lapses and a worker takes the execution over,
    so a sync caller's work is not lost either.
    """
    started = time.monotonic()
    called, handed_over = not created, False
    interval = 0.005
    while True:
        if not called and _calls_free.acquire(blocking=False):
            called = True
            await _call_here(execution_id)
        elif not called and not handed_over and time.monotonic() - started >= HAND_OVER_AFTER:
            handed_over = True
            await run_db(dispatch.enqueue, execution_id)
        if called or handed_over or time.monotonic() >= deadline:
            execution = await run_db(_read, execution_id)
            if execution.is_terminal or time.monotonic() >= deadline:
                return execution
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 2, 0.25 if called else 0.1)
