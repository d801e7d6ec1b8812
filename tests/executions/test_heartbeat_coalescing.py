"""Heartbeats: one statement for an online node, coalesced to one write a second, liveness still exact.

Under daphne, a beat of a node lately seen online is answered from memory and written in a batch.
"""

import asyncio
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agentfield_site.auth import Caller
from agentfield_site.models import ApiKey
from executions import nodes
from executions.errors import UnknownNode
from executions.models import AgentNode
from observability.models import PlatformEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_memory():
    nodes._written.clear()
    yield
    nodes._written.clear()


@pytest.fixture
def owner() -> Caller:
    key, _ = ApiKey.create("agent-a", ApiKey.Scope.AGENT)
    return Caller(ApiKey.Scope.AGENT, key.pk, key.name)


@pytest.fixture
def node(owner) -> AgentNode:
    created, _ = nodes.register({"id": "writer", "base_url": "http://localhost:8001"}, owner)
    return created


def _stored(node_id: str = "writer") -> AgentNode:
    return AgentNode.objects.get(pk=node_id)


def _statements(queries: CaptureQueriesContext) -> list[str]:
    """The statements that touched a table (PostgreSQL's SET LOCAL and savepoints aside)."""
    return [q["sql"] for q in queries.captured_queries if q["sql"].startswith(("SELECT", "UPDATE", "INSERT"))]


def test_an_online_node_beats_in_one_statement(node, owner):
    with CaptureQueriesContext(connection) as queries:
        nodes.heartbeat("writer", "ready", owner)
    assert len(_statements(queries)) == 1 and _statements(queries)[0].startswith("UPDATE"), queries.captured_queries
    assert _stored().lifecycle_status == "ready"


def test_a_second_beat_within_the_interval_writes_nothing_unless_its_status_changed(
    node, owner, django_assert_num_queries
):
    nodes.heartbeat("writer", "ready", owner)
    written = _stored().last_heartbeat
    with django_assert_num_queries(0):
        nodes.heartbeat("writer", "ready", owner)
        nodes.heartbeat("writer", "", owner)
    assert _stored().last_heartbeat == written
    with CaptureQueriesContext(connection) as queries:
        nodes.heartbeat("writer", "busy", owner)
    assert len(_statements(queries)) == 1
    assert _stored().lifecycle_status == "busy"


def test_after_the_interval_the_beat_is_written_again(node, owner, monkeypatch):
    nodes.heartbeat("writer", "ready", owner)
    first = _stored().last_heartbeat
    monkeypatch.setattr(nodes, "HEARTBEAT_WRITE_INTERVAL", 0.0)
    nodes.heartbeat("writer", "ready", owner)
    assert _stored().last_heartbeat > first


def test_another_keys_beat_is_never_answered_from_memory(node, owner):
    nodes.heartbeat("writer", "ready", owner)
    other, _ = ApiKey.create("agent-b", ApiKey.Scope.AGENT)
    with pytest.raises(UnknownNode):
        nodes.heartbeat("writer", "ready", Caller(ApiKey.Scope.AGENT, other.pk, other.name))


def test_a_beat_right_after_shutdown_brings_the_node_back(node, owner):
    nodes.heartbeat("writer", "ready", owner)
    nodes.shutdown("writer", owner)
    nodes.heartbeat("writer", "ready", owner)
    assert _stored().health_status == AgentNode.Health.ACTIVE
    assert list(PlatformEvent.objects.filter(agent_node_id="writer").values_list("type", flat=True)) == [
        "node.registered", "node.offline", "node.online",
    ]


def test_liveness_allows_for_the_coalescing_and_no_more(node, settings):
    """The stored beat may trail the last one by the interval: never offline before NODE_OFFLINE_AFTER."""
    settings.NODE_OFFLINE_AFTER = 30
    allowance = nodes.HEARTBEAT_WRITE_INTERVAL
    AgentNode.objects.update(last_heartbeat=timezone.now() - timedelta(seconds=30 + allowance - 0.5))
    assert nodes.mark_silent_nodes_offline() == 0
    AgentNode.objects.update(last_heartbeat=timezone.now() - timedelta(seconds=30 + allowance + 0.5))
    assert nodes.mark_silent_nodes_offline() == 1


# --- Beats acknowledged from memory (under daphne) and written in batches -----------------


def _from_memory(node_id: str, status: str, caller: Caller):
    """`beat_from_memory` as the fast lane calls it: on an event loop (whose flusher task ends with it)."""

    async def beat():
        return nodes.beat_from_memory(node_id, status, caller)

    return asyncio.run(beat())


@pytest.fixture
def nothing_queued():
    nodes.flush_beats()
    yield
    nodes._queued.clear()
    nodes._queued_since = None


def test_a_known_node_beats_from_memory_and_the_batch_writes_its_time(node, owner, nothing_queued,
                                                                       django_assert_num_queries):
    nodes.heartbeat("writer", "ready", owner)
    before = timezone.now()
    with django_assert_num_queries(0):
        beat = _from_memory("writer", "ready", owner)
        assert _from_memory("writer", "", owner) is not None
    assert beat >= before
    with CaptureQueriesContext(connection) as queries:
        assert nodes.flush_beats() == 1
    assert [q for q in _statements(queries) if q.startswith("UPDATE")], queries.captured_queries
    # The batch's time is its first beat's: never ahead of a beat, never behind it by more than a flush.
    assert before <= _stored().last_heartbeat <= beat
    assert nodes.flush_beats() == 0  # nothing queued since


def test_memory_answers_only_the_same_key_an_unchanged_status_and_a_node_seen_lately(node, owner, nothing_queued,
                                                                                     monkeypatch):
    assert _from_memory("writer", "ready", owner) is None  # not seen by this process yet
    nodes.heartbeat("writer", "ready", owner)
    other, _ = ApiKey.create("agent-b", ApiKey.Scope.AGENT)
    assert _from_memory("writer", "ready", Caller(ApiKey.Scope.AGENT, other.pk, other.name)) is None
    assert _from_memory("writer", "busy", owner) is None  # a new status is written at once
    monkeypatch.setattr(nodes, "_written", {k: (v[0] - 3600, *v[1:]) for k, v in nodes._written.items()})
    assert _from_memory("writer", "ready", owner) is None  # seen too long ago: ask the database


def test_a_queued_beat_of_a_node_gone_offline_before_it_came_brings_it_back(node, owner, nothing_queued):
    nodes.heartbeat("writer", "ready", owner)
    # Another process (the sweeper, a shutdown there) marks it offline; this one has not heard.
    with transaction.atomic():
        nodes._node_event("node.offline", node, reason="heartbeat_missed")
        AgentNode.objects.update(health_status=AgentNode.Health.INACTIVE, lifecycle_status="offline")
    assert _from_memory("writer", "ready", owner) is not None
    nodes.flush_beats()
    stored = _stored()
    assert stored.health_status == AgentNode.Health.ACTIVE and stored.lifecycle_status == "ready"
    assert PlatformEvent.objects.filter(agent_node_id="writer", type="node.online").count() == 1


def test_a_beat_queued_before_a_shutdown_notice_does_not_undo_it(node, owner, nothing_queued):
    """The SDK's last beat can still be queued when its shutdown notice lands: the notice is the newer news."""
    nodes.heartbeat("writer", "ready", owner)
    assert _from_memory("writer", "ready", owner) is not None
    nodes.shutdown("writer", owner)
    nodes.flush_beats()
    assert _stored().health_status == AgentNode.Health.INACTIVE
    assert list(PlatformEvent.objects.filter(agent_node_id="writer").values_list("type", flat=True)) == [
        "node.registered", "node.offline",
    ]
    # An agent that lives on beats again, and that beat brings it back.
    assert _from_memory("writer", "ready", owner) is None
    nodes.heartbeat("writer", "ready", owner)
    assert _stored().health_status == AgentNode.Health.ACTIVE


def test_a_queued_beat_of_a_deleted_node_is_dropped_and_the_next_beat_is_unknown(node, owner, nothing_queued):
    nodes.heartbeat("writer", "ready", owner)
    assert _from_memory("writer", "ready", owner) is not None
    AgentNode.objects.filter(pk="writer").delete()
    nodes.flush_beats()
    assert not AgentNode.objects.filter(pk="writer").exists()
    assert _from_memory("writer", "ready", owner) is None
    with pytest.raises(UnknownNode):
        nodes.heartbeat("writer", "ready", owner)
