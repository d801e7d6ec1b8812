"""Fixtures for executions tests: a registered node backed by a real loopback agent."""

import pytest
from rest_framework.test import APIClient

from devtools.loopback import LoopbackServer
from executions import nodes
from executions.models import AgentNode


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def agent():
    with LoopbackServer.agent() as server:
        yield server


@pytest.fixture
def node(db, agent) -> AgentNode:
    """Node `analyzer` with reasoner `process` and skill `count`, served by `agent`."""
    created, _ = nodes.register(
        {
            "id": "analyzer",
            "base_url": agent.url,
            "version": "1.0.0",
            "reasoners": [{"id": "process", "tags": []}],
            "skills": [{"id": "count"}],
        }
    )
    return created


@pytest.fixture
def completions(monkeypatch) -> list[dict]:
    """Completion webhooks handed to the webhooks app, as (kwargs) dicts."""
    from executions import lifecycle

    calls: list[dict] = []
    real = lifecycle.enqueue_completion

    def record(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(lifecycle, "enqueue_completion", record)
    return calls
