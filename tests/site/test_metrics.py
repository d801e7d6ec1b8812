"""GET /metrics: Prometheus text, counted from the database, protected like the API."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentfield_site.models import ApiKey
from devtools.loopback import LoopbackServer, Reply
from tests.webhooks.conftest import drain, enqueue, webhook_settings  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_open_when_no_key_and_no_token(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert ("agentfield_webhook_pending", ()) in samples(response.content.decode())


def test_token_or_key_required_once_configured(client, settings):
    settings.METRICS_TOKEN = "scrape-me"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").json()["error"] == "unauthorized"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200
    _, raw = ApiKey.create("ops", ApiKey.Scope.ADMIN)
    assert client.get("/metrics", HTTP_X_API_KEY=raw).status_code == 200
    # A client or agent key is not an operator's: the platform's figures are not theirs. The key
    # is valid, so the answer is the contract's 403 for a call outside its scope, not a 401.
    for scope in (ApiKey.Scope.CLIENT, ApiKey.Scope.AGENT):
        _, raw = ApiKey.create(f"not-ops-{scope}", scope)
        response = client.get("/metrics", HTTP_X_API_KEY=raw)
        assert response.status_code == 403 and response.json()["error"] == "forbidden"
        assert scope in response.json()["message"]


def test_api_keys_close_it_without_a_token(client, settings):
    settings.API_KEYS = ["k1"]
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer k1").status_code == 200


def test_deliveries_attempts_and_dead_letters_are_counted(client, webhook_settings):  # noqa: F811
    with LoopbackServer() as ok, LoopbackServer(default=Reply(500)) as failing:
        drain(enqueue(ok.url, execution_id="exec_ok"))
        dead = drain(enqueue(failing.url, execution_id="exec_dead"))
        enqueue(ok.url, execution_id="exec_waiting")
    got = samples(client.get("/metrics").content.decode())
    assert got[("agentfield_webhook_deliveries_total", (("outcome", "delivered"),))] == 1
    assert got[("agentfield_webhook_deliveries_total", (("outcome", "retry"),))] == dead.attempts - 1
    assert got[("agentfield_webhook_deliveries_total", (("outcome", "dead"),))] == 1
    assert got[("agentfield_webhook_dead_letters", ())] == 1
    assert got[("agentfield_webhook_pending", ())] == 1
    assert got[("agentfield_webhook_attempt_duration_seconds_count", ())] == dead.attempts + 1
    assert got[("agentfield_webhook_attempt_duration_seconds_bucket", (("le", "+Inf"),))] == dead.attempts + 1
    # Loopback answers in well under 10 s: every attempt is in the 10 s bucket.
    assert got[("agentfield_webhook_attempt_duration_seconds_bucket", (("le", "10.0"),))] == dead.attempts + 1


def test_alert_rules_use_only_exposed_metrics(client):
    import re

    import yaml

    from devtools.processes import ROOT
    from webhooks.models import Destination

    # A breaker series exists only while one is open.
    Destination.objects.create(destination="http://127.0.0.1:9", state=Destination.State.OPEN)
    rules = yaml.safe_load((ROOT / "docs" / "prometheus" / "agentfield-alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"agentfield_[a-z_]+", expr)}
    got = samples(client.get("/metrics").content.decode())
    exposed = {name for name, _ in got}
    assert used <= exposed
    assert got[("agentfield_destination_breaker_open", (("destination", "http://127.0.0.1:9"),))] == 1
    assert got[("agentfield_destinations", (("state", "open"),))] == 1


def test_breaker_series_are_bounded_and_the_longest_open_come_first(client):
    """Any key may name receivers that fail; every series a scrape returns is kept by Prometheus."""
    from datetime import timedelta

    from django.utils import timezone

    from webhooks.metrics import BREAKER_SERIES_MAX
    from webhooks.models import Destination

    now = timezone.now()
    Destination.objects.bulk_create(
        Destination(destination=f"http://h{i}.example:80", state=Destination.State.OPEN, opened_at=now - timedelta(seconds=i))
        for i in range(BREAKER_SERIES_MAX + 20)
    )
    got = samples(client.get("/metrics").content.decode())
    shown = {dict(labels)["destination"] for name, labels in got if name == "agentfield_destination_breaker_open"}
    assert len(shown) == BREAKER_SERIES_MAX
    assert "http://h69.example:80" in shown and "http://h0.example:80" not in shown, "the longest open first"
    assert got[("agentfield_destinations", (("state", "open"),))] == BREAKER_SERIES_MAX + 20


def test_agent_calls_in_flight_by_node(client):
    """An operator sees which node holds its calls (and, at its cap, its queue)."""
    from executions import dispatch, nodes, submission

    with LoopbackServer.agent() as agent:
        nodes.register({"id": "analyzer", "base_url": agent.url, "version": "1", "reasoners": [{"id": "process"}]})
        for _ in range(3):
            submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)
        dispatch.claim_next()
        dispatch.claim_next()
    scraped = samples(client.get("/metrics").content.decode())
    assert scraped[("agentfield_agent_calls_in_flight", (("node", "analyzer"),))] == 2
    assert scraped[("agentfield_executions_active", (("status", "queued"),))] == 1
