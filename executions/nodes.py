"""The node registry: registration, heartbeats, shutdown and offline detection.

Heartbeats are not events (one every 2 s per agent would drown the log); changes of
reachability are: `node.registered`, `node.online`, `node.offline`.

Heartbeats are the most frequent call. A beat for an online node is one UPDATE
that also checks ownership; and a node's `last_heartbeat` is written at most once
per HEARTBEAT_WRITE_INTERVAL by each web process, unless its status changes (a
faster beat is acknowledged with no statement at all). The stored time may then
trail the last beat by up to that interval, so the liveness check allows for it:
a node is never marked offline before NODE_OFFLINE_AFTER of silence.

Under daphne a beat costs no statement and no thread at all when this process
has lately seen the node online and owned by the beating key, and its status is
unchanged (`beat_from_memory`, on the event loop): its time is queued and the
queued beats are written together every BEAT_FLUSH_EVERY (`flush_beats`, one
UPDATE per key), with the batch's start as their time, so the stored time never
runs ahead of a beat and trails it by less than the interval above. A queued
node found offline by then comes back online as a written beat would bring it,
unless it went offline after that beat came: a beat sent before a shutdown
notice never undoes it (the agent's next beat, if it lives, brings it back). One
found gone or taken is forgotten, and its next beat is answered 404. A beat
queued when its process dies is lost, like a beat not sent: the next one counts.
"""

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from agentfield_site.auth import OPEN, Caller
from agentfield_site.lib.db_threads import run_in
from agentfield_site.lib.sqlite_writer import one_writer
from agentfield_site.models import ApiKey
from observability.events import publish
from observability.models import PlatformEvent

from .errors import NodeTaken, TooManyNodes, UnknownNode
from .models import AgentNode
from .ownership import check_registration, nodes_of

log = logging.getLogger(__name__)


def _node_event(event_type: str, node: AgentNode, **data: Any) -> None:
    publish(
        event_type,
        agent_node_id=node.id,
        status=node.health_status,
        data={"base_url": node.base_url, "version": node.version, **data},
    )


def register(data: dict[str, Any], caller: Caller = OPEN) -> tuple[AgentNode, bool]:
    """Create or update a node from the SDK's registration body (already validated).

    The registering key owns the node; another key's node raises `NodeTaken`.
    """
    try:
        return _register(data, caller)
    except IntegrityError:
        # Another registration inserted this new id first: it owns it now.
        raise NodeTaken(data["id"]) from None


def _register(data: dict[str, Any], caller: Caller) -> tuple[AgentNode, bool]:
    now = timezone.now()
    _forget(data["id"])
    with transaction.atomic():
        node = AgentNode.objects.select_for_update().filter(pk=data["id"]).first()
        check_registration(caller, node)
        created = node is None
        # Every node is listed, swept for liveness and looked up by every dispatch:
        # one key must not grow that without bound for everyone.
        limit = settings.AGENT_MAX_NODES_PER_KEY
        if created and caller.key_id is not None and not caller.is_admin and (
            AgentNode.objects.filter(owner_id=caller.key_id).count() >= limit
        ):
            raise TooManyNodes(limit)
        was_inactive = node is not None and node.health_status == AgentNode.Health.INACTIVE
        if node is None:
            node = AgentNode(id=data["id"], registered_at=now)
        node.owner_id = caller.key_id
        node.base_url = data["base_url"]
        node.version = data.get("version") or ""
        node.reasoners = data.get("reasoners") or []
        node.skills = data.get("skills") or []
        node.metadata = data.get("metadata") or {}
        node.instance_id = data.get("instance_id") or ""
        node.lifecycle_status = data.get("lifecycle_status") or "ready"
        # A revoked key's node stays offline: a process that has not heard of the revocation yet
        # (API_KEY_CACHE_SECONDS) still takes the key, after `key_revoked` took its nodes offline.
        revoked = caller.key_id is not None and ApiKey.objects.filter(
            pk=caller.key_id, revoked_at__isnull=False
        ).exists()
        node.health_status = AgentNode.Health.INACTIVE if revoked else AgentNode.Health.ACTIVE
        if revoked:
            node.lifecycle_status = "offline"
        node.last_heartbeat = now
        # A new id is inserted, never saved over: two keys racing for the same new
        # id must not both win (the loser's UPDATE would take the node over).
        node.save(force_insert=created)
        _node_event(
            "node.registered",
            node,
            reasoners=node.reasoner_ids(),
            skills=node.skill_ids(),
            re_registered=not created,
        )
        if was_inactive and not revoked:
            _node_event("node.online", node)
    return node, created


HEARTBEAT_WRITE_INTERVAL = 1.0
# node id -> (monotonic time written, lifecycle status written, key id, scope), this process.
_written: dict[str, tuple[float, str, int | None, str]] = {}
_WRITTEN_MAX = 100_000


def offline_cutoff_delta() -> timedelta:
    """How long a node's stored heartbeat may age before the node is offline."""
    return timedelta(seconds=settings.NODE_OFFLINE_AFTER + HEARTBEAT_WRITE_INTERVAL)


def _forget(node_id: str) -> None:
    """The node changed here (registered, shut down, offline): its next beat is written."""
    _written.pop(node_id, None)


def heartbeat(node_id: str, lifecycle_status: str = "", caller: Caller = OPEN) -> datetime:
    """Record a heartbeat and return its time; an offline node comes back with `node.online`.

    Another key's node is `UnknownNode`, as an unknown one is.
    """
    now = timezone.now()
    status = lifecycle_status[:32]
    if status == "offline":
        # The agent says it is stopping (the SDK's status once SIGTERM came): offline as
        # after a shutdown, where such a beat brought the node back online and sent work.
        shutdown(node_id, caller, reason="heartbeat_offline")
        return now
    seen = _written.get(node_id)
    beat_at = time.monotonic()
    if (
        seen is not None
        and beat_at - seen[0] < HEARTBEAT_WRITE_INTERVAL
        and (seen[2], seen[3]) == (caller.key_id, caller.scope)
        and status in ("", seen[1])
    ):
        return now
    fields: dict[str, Any] = {"last_heartbeat": now}
    if status:
        fields["lifecycle_status"] = status
    # An online node of this caller's: one statement, which also checks ownership. A
    # heartbeat lost in a database crash is rewritten by the next one: no flush awaited.
    with one_writer(durable=False):
        written = nodes_of(caller).filter(pk=node_id, health_status=AgentNode.Health.ACTIVE).update(**fields)
    if written:
        if len(_written) >= _WRITTEN_MAX:
            _written.clear()
        _written[node_id] = (beat_at, status or (seen[1] if seen else ""), caller.key_id, caller.scope)
        return now
    _forget(node_id)
    if not caller.is_admin and not nodes_of(caller).filter(pk=node_id).exists():
        raise UnknownNode(node_id, "; register first")
    with transaction.atomic():
        # Not a node whose key was revoked: a process that has not heard yet
        # (API_KEY_CACHE_SECONDS) still takes the key's beats.
        back = AgentNode.objects.filter(
            Q(owner__isnull=True) | Q(owner__revoked_at__isnull=True), pk=node_id, health_status=AgentNode.Health.INACTIVE
        ).update(health_status=AgentNode.Health.ACTIVE, **fields)
        if back:
            _node_event("node.online", AgentNode.objects.get(pk=node_id))
        elif not AgentNode.objects.filter(pk=node_id).update(**fields):
            raise UnknownNode(node_id, "; register first")
    return now


# Beats acknowledged from memory, waiting to be written:
# (key id, scope) -> {node id: (status, when its latest beat came)}.
BEAT_FLUSH_EVERY = 0.25
_queued: dict[tuple[int | None, str], dict[str, tuple[str, datetime]]] = {}
_queued_since: datetime | None = None  # when the oldest queued beat came
_queue_lock = threading.Lock()
_flusher: "asyncio.Task | None" = None
# Its own thread: a flush never waits for a request thread, nor holds one.
_flush_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="beats")


def beat_from_memory(node_id: str, lifecycle_status: str, caller: Caller) -> datetime | None:
    """On the event loop: acknowledge a beat with no statement, or None when it must go to the database.

    Only for a node whose last write here (or last flush) found it online and
    owned by this same key, no longer ago than half the offline window, and a
    status that is empty or unchanged.
    """
    global _queued_since
    seen = _written.get(node_id)
    status = lifecycle_status[:32]
    if (
        seen is None
        or (seen[2], seen[3]) != (caller.key_id, caller.scope)
        or status not in ("", seen[1])
        or time.monotonic() - seen[0] > settings.NODE_OFFLINE_AFTER / 2
    ):
        return None
    now = timezone.now()
    with _queue_lock:
        if _queued_since is None:
            _queued_since = now
        _queued.setdefault((caller.key_id, caller.scope), {})[node_id] = (seen[1], now)
    _ensure_flusher()
    return now


def _ensure_flusher() -> None:
    global _flusher
    if _flusher is None or _flusher.done():
        _flusher = asyncio.get_running_loop().create_task(_flush_forever())


async def _flush_forever() -> None:
    while True:
        await asyncio.sleep(BEAT_FLUSH_EVERY)
        if _queued:
            try:
                await run_in(_flush_thread, flush_beats)
            except Exception:  # the next flush writes newer beats; liveness allows for a miss
                log.exception("could not write queued heartbeats")


def flush_beats() -> int:
    """Write the queued beats, one UPDATE per key; returns how many nodes were written."""
    global _queued_since
    with _queue_lock:
        batch, since = dict(_queued), _queued_since
        _queued.clear()
        _queued_since = None
    if since is None:
        return 0
    written = 0
    for (key_id, scope), beats in batch.items():
        caller = Caller(scope, key_id)
        ids = list(beats)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            online = nodes_of(caller).filter(pk__in=chunk, health_status=AgentNode.Health.ACTIVE)
            with one_writer(durable=False):
                count = online.update(last_heartbeat=since)
            confirmed = set(chunk) if count == len(chunk) else set(online.values_list("pk", flat=True))
            beat_at = time.monotonic()
            for node_id in confirmed:
                seen = _written.get(node_id)  # a request thread may forget it meanwhile
                if seen is not None:
                    _written[node_id] = (beat_at, *seen[1:])
            for node_id in set(chunk) - confirmed:
                # Offline now (the sweeper, a shutdown elsewhere), or gone: as a written beat would find it,
                # unless the node went offline after this beat came.
                _forget(node_id)
                status, came_at = beats[node_id]
                if _went_offline_since(node_id, came_at):
                    continue
                with contextlib.suppress(UnknownNode):  # gone or taken: forgotten, its next beat is a 404
                    heartbeat(node_id, status, caller)
            written += len(chunk)
    return written


def _went_offline_since(node_id: str, moment: datetime) -> bool:
    """Whether the node's `node.offline` event (a shutdown, the sweeper) came at or after `moment`."""
    return PlatformEvent.objects.filter(agent_node_id=node_id, type="node.offline", timestamp__gte=moment).exists()


def shutdown(node_id: str, caller: Caller = OPEN, reason: str = "shutdown") -> AgentNode:
    """The agent said it stops: it is offline at once."""
    with transaction.atomic():
        node = nodes_of(caller).filter(pk=node_id).first()
        if node is None:
            raise UnknownNode(node_id)
        _mark_offline(node, reason=reason)
    return node


def _mark_offline(node: AgentNode, reason: str) -> bool:
    _forget(node.pk)
    changed = AgentNode.objects.filter(pk=node.pk, health_status=AgentNode.Health.ACTIVE).update(
        health_status=AgentNode.Health.INACTIVE, lifecycle_status="offline"
    )
    if changed:
        node.health_status = AgentNode.Health.INACTIVE
        node.lifecycle_status = "offline"
        _node_event("node.offline", node, reason=reason)
    return bool(changed)


def take_offline_nodes_of_revoked(sender, keys, **kwargs) -> None:
    """`key_revoked`: the revoked keys' nodes go offline at once.

    Their agents' beats and results are refused from now on, so they cannot stay
    online nor come back (`heartbeat`); executions still queued for them fail when
    dispatched (`dispatch.call`) instead of waiting for results that cannot come.
    """
    for node in AgentNode.objects.filter(owner__in=keys, health_status=AgentNode.Health.ACTIVE):
        _mark_offline(node, reason="key_revoked")


def mark_silent_nodes_offline() -> int:
    """Sweeper tick: nodes without a heartbeat for NODE_OFFLINE_AFTER go offline."""
    cutoff = timezone.now() - offline_cutoff_delta()
    count = 0
    for node in AgentNode.objects.filter(health_status=AgentNode.Health.ACTIVE, last_heartbeat__lt=cutoff)[:200]:
        with transaction.atomic():
            # The conditional update re-checks the heartbeat so a beat that lands
            # between the read and the write keeps the node online.
            changed = AgentNode.objects.filter(
                pk=node.pk, health_status=AgentNode.Health.ACTIVE, last_heartbeat__lt=cutoff
            ).update(health_status=AgentNode.Health.INACTIVE, lifecycle_status="offline")
            if changed:
                node.health_status = AgentNode.Health.INACTIVE
                _node_event("node.offline", node, reason="heartbeat_missed")
                count += 1
    return count
