"""Revoking a key ends what it left running: its nodes go offline, its subscriptions stop.

Both ways of revoking (the admin's action, `manage.py apikey revoke`) go through
`ApiKey.objects.revoke()`, which sends `key_revoked`; the apps answer it.
"""

import pytest
from django.contrib.admin.sites import site
from django.core.management import call_command
from django.db import transaction
from django.test import RequestFactory
from rest_framework.test import APIClient

from agentfield_site.auth import Caller
from agentfield_site.models import ApiKey
from devtools.loopback import LoopbackServer
from executions import dispatch, nodes
from executions.models import AgentNode, Execution
from observability.events import publish
from observability.models import PlatformEvent
from webhooks.models import Delivery, Subscription

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent():
    server = LoopbackServer.agent().run_in_thread()
    yield server
    server.stop()


@pytest.fixture
def keys(settings) -> dict[str, tuple[ApiKey, str]]:
    settings.API_KEYS = []
    return {name: ApiKey.create(name, scope) for name, scope in (
        ("agent_a", "agent"), ("agent_b", "agent"), ("client_a", "client"), ("client_b", "client"))}


def _register(api: APIClient, raw: str, node_id: str, base_url: str) -> None:
    body = {"id": node_id, "base_url": base_url, "version": "1", "reasoners": [{"id": "work"}]}
    assert api.post("/api/v1/nodes/register", body, format="json", headers={"X-API-Key": raw}).status_code == 201


def _submit(api: APIClient, raw: str, target: str) -> str:
    response = api.post(f"/api/v1/execute/async/{target}", {"input": {"n": 1}}, format="json",
                        headers={"X-API-Key": raw})
    assert response.status_code == 202, response.content
    return response.json()["execution_id"]


def _revoke_in_the_admin(admin_user, key: ApiKey) -> None:
    request = RequestFactory().post("/")
    request.user = admin_user
    shown: list[str] = []
    request._messages = type("M", (), {"add": lambda self, level, message, *a: shown.append(message)})()
    site._registry[ApiKey].revoke(request, ApiKey.objects.filter(pk=key.pk))
    assert shown and shown[0].startswith("Revoked 1 key(s)")


def test_a_revoked_agent_keys_nodes_go_offline_and_its_queued_executions_fail_at_once(keys, agent, admin_user):
    api = APIClient()
    _register(api, keys["agent_a"][1], "node-a", agent.url)
    _register(api, keys["agent_b"][1], "node-b", agent.url)
    queued = _submit(api, keys["client_a"][1], "node-a.work")

    _revoke_in_the_admin(admin_user, keys["agent_a"][0])

    assert AgentNode.objects.get(pk="node-a").health_status == AgentNode.Health.INACTIVE
    assert AgentNode.objects.get(pk="node-b").health_status == AgentNode.Health.ACTIVE
    offline = PlatformEvent.objects.get(type="node.offline", agent_node_id="node-a")
    assert offline.data["reason"] == "key_revoked"
    # Dispatched after the revocation: failed with the reason, and the agent never called
    # (it could take the work but never report the result with its key).
    assert dispatch.run(queued) == "failed"
    execution = Execution.objects.get(pk=queued)
    assert execution.status == "failed" and execution.error_category == "agent_unreachable"
    assert "revoked" in execution.error
    assert not agent.requests
    # A process that has not heard of the revocation yet still takes the key's beats:
    # they do not bring the node back.
    nodes.heartbeat("node-a", "ready", Caller("agent", keys["agent_a"][0].pk))
    assert AgentNode.objects.get(pk="node-a").health_status == AgentNode.Health.INACTIVE
    assert not PlatformEvent.objects.filter(type="node.online", agent_node_id="node-a").exists()
    # The key is refused from now on; the other key's node still works.
    assert api.post("/api/v1/nodes/node-a/heartbeat", {}, format="json",
                    headers={"X-API-Key": keys["agent_a"][1]}).status_code == 401
    other = _submit(api, keys["client_a"][1], "node-b.work")
    assert dispatch.run(other) == "succeeded"


def test_a_revoked_client_keys_subscriptions_stop_and_the_others_go_on(keys, agent, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    api = APIClient()
    _register(api, keys["agent_a"][1], "node-a", agent.url)
    subs, executions = {}, {}
    for name in ("client_a", "client_b"):
        response = api.post("/api/v1/webhooks/subscriptions", {"url": "http://127.0.0.1:9/hook", "event_types": ["*"]},
                            format="json", headers={"X-API-Key": keys[name][1]})
        assert response.status_code == 201, response.content
        subs[name] = response.json()["id"]
        executions[name] = _submit(api, keys[name][1], "node-a.work")

    def heard(name: str) -> int:
        return Delivery.objects.filter(subscription_id=subs[name]).count()

    before = {name: heard(name) for name in subs}
    assert all(before.values()), "each subscription hears its own key's executions"

    out = call_command_output("revoke", str(keys["client_a"][0].pk))
    assert "subscriptions disabled" in out

    revoked = Subscription.objects.get(pk=subs["client_a"])
    assert not revoked.enabled and "revoked" in revoked.disabled_reason
    assert Subscription.objects.get(pk=subs["client_b"]).enabled
    for name in subs:
        with transaction.atomic():
            publish("execution.running", execution_id=executions[name], status="running", data={})
    assert heard("client_a") == before["client_a"]
    assert heard("client_b") == before["client_b"] + 1


def test_revoking_twice_or_a_key_with_nothing_running_is_quiet(keys):
    key = keys["agent_b"][0]
    assert ApiKey.objects.filter(pk=key.pk).revoke() == 1
    assert ApiKey.objects.filter(pk=key.pk).revoke() == 0
    assert not PlatformEvent.objects.filter(type="node.offline").exists()


def call_command_output(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("apikey", *args, stdout=out)
    return out.getvalue()


def _revoke_elsewhere(key: ApiKey, raw: str) -> None:
    """Revoke `key` while this process goes on taking it, as another process does for API_KEY_CACHE_SECONDS."""
    from agentfield_site import auth

    assert auth.check_key(raw) is not None  # remembered now
    remembered = dict(auth._remembered)
    assert ApiKey.objects.filter(pk=key.pk).revoke() == 1
    auth._remembered.update(remembered)


def test_a_subscription_enabled_or_made_by_a_revoked_key_in_a_process_that_had_not_heard_hears_nothing(keys, agent, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.API_KEY_CACHE_SECONDS = 60
    api = APIClient()
    key, raw = keys["client_a"]
    _register(api, keys["agent_a"][1], "node-a", agent.url)
    execution = _submit(api, raw, "node-a.work")
    sub = api.post("/api/v1/webhooks/subscriptions", {"url": "http://127.0.0.1:9/hook", "event_types": ["*"]},
                   format="json", headers={"X-API-Key": raw}).json()["id"]

    _revoke_elsewhere(key, raw)
    # The leaked key, in a process that has not heard yet: enables its subscription again, makes a new one.
    assert api.patch(f"/api/v1/webhooks/subscriptions/{sub}", {"enabled": True}, format="json",
                     headers={"X-API-Key": raw}).status_code == 200
    made = api.post("/api/v1/webhooks/subscriptions", {"url": "http://127.0.0.1:9/late", "event_types": ["*"]},
                    format="json", headers={"X-API-Key": raw})
    assert made.status_code == 201
    before = Delivery.objects.filter(subscription__owner=key).count()
    with transaction.atomic():
        publish("execution.running", execution_id=execution, status="running", data={})
    assert Delivery.objects.filter(subscription__owner=key).count() == before


def test_a_revoked_agent_key_registering_in_a_process_that_had_not_heard_does_not_bring_its_node_online(keys, agent, settings):
    settings.API_KEY_CACHE_SECONDS = 60
    api = APIClient()
    key, raw = keys["agent_a"]
    _register(api, raw, "node-a", agent.url)
    _revoke_elsewhere(key, raw)
    assert AgentNode.objects.get(pk="node-a").health_status == AgentNode.Health.INACTIVE

    _register(api, raw, "node-a", agent.url)
    assert AgentNode.objects.get(pk="node-a").health_status == AgentNode.Health.INACTIVE
    assert not PlatformEvent.objects.filter(type="node.online", agent_node_id="node-a").exists()
    assert api.post("/api/v1/nodes/node-a/heartbeat", {}, format="json", headers={"X-API-Key": raw}).status_code == 200
    assert AgentNode.objects.get(pk="node-a").health_status == AgentNode.Health.INACTIVE
