"""Heartbeats: one statement for an online node, coalesced to one write a second, liveness still exact."""

from datetime import timedelta

import pytest
from django.db import connection
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
