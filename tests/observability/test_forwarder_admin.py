"""The admin edits the one collector configuration (secret masked) and redrives dead letters."""

import pytest
from django.contrib.auth.models import User

from devtools.loopback import LoopbackServer
from observability import events
from observability.forwarder import configuration, runner
from observability.models import ForwarderConfig, ForwarderDeadLetter


@pytest.fixture
def staff(client, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.OBSERVABILITY_RETRY_SCHEDULE = [0.01, 0.01]
    settings.OBSERVABILITY_FLUSH_INTERVAL = 0.05
    user = User.objects.create_superuser("alice", "alice@example.com", "pw-alice-123")
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_admin_adds_one_configuration_and_never_shows_the_secret(staff):
    response = staff.post(
        "/admin/observability/forwarderconfig/add/",
        {
            "url": "http://127.0.0.1:9/collect",
            "secret": "admin-secret",
            "headers": '{"X-Team": "team-token-1"}',
            "enabled": "on",
            "event_types": '["execution.*"]',
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    config = ForwarderConfig.current()
    assert (config.secret, config.headers, config.event_types) == (
        "admin-secret",
        {"X-Team": "team-token-1"},
        ["execution.*"],
    )

    page = staff.get(f"/admin/observability/forwarderconfig/{config.pk}/change/").content.decode()
    assert "admin-secret" not in page
    assert "team-token-1" not in page and "X-Team" in page, "header values are write-only too"
    assert staff.get("/admin/observability/forwarderconfig/add/").status_code == 403, (
        "only one configuration"
    )

    # Saving with the secret left empty keeps it; bad input is refused like the API does.
    change = f"/admin/observability/forwarderconfig/{config.pk}/change/"
    fields = {
        "url": "http://127.0.0.1:9/other",
        "headers": "{}",
        "enabled": "on",
        "event_types": '["*"]',
    }
    assert staff.post(change, {**fields, "headers": '{"X-Team": "***"}'}).status_code == 302
    assert ForwarderConfig.current().headers == {"X-Team": "team-token-1"}, "a value left masked keeps the stored one"
    new_masked = staff.post(change, {**fields, "headers": '{"X-Team": "***", "X-Other": "***"}'})
    assert new_masked.status_code == 200 and "send the value itself" in new_masked.content.decode()
    assert ForwarderConfig.current().headers == {"X-Team": "team-token-1"}
    assert staff.post(change, fields).status_code == 302
    assert ForwarderConfig.current().secret == "admin-secret"
    assert ForwarderConfig.current().url == "http://127.0.0.1:9/other"
    bad = staff.post(change, {**fields, "url": "http://10.1.2.3/x"})
    assert bad.status_code == 200 and "private" in bad.content.decode()


@pytest.mark.django_db
def test_admin_redrive_action_delivers_selected_dead_letters(staff):
    with LoopbackServer.collector(status=400) as collector:
        configuration.configure(
            url=collector.url, secret="s", headers={}, enabled=True, event_types=["*"]
        )
        ids = [e.id for e in events.publish_many(events.build("node.online") for _ in range(4))]
        runner.run(seconds=5, linger=0)
        assert ForwarderDeadLetter.objects.count() == 4
        assert staff.get("/admin/observability/forwarderdeadletter/").status_code == 200

        collector.default.status = 200
        chosen = list(ForwarderDeadLetter.objects.order_by("id").values_list("id", flat=True)[:3])
        response = staff.post(
            "/admin/observability/forwarderdeadletter/",
            {"action": "redrive_selected", "_selected_action": chosen},
            follow=True,
        )
        assert response.status_code == 200
        assert "3 delivered" in response.content.decode()
        assert collector.accepted_ids() == ids[:3]
        assert list(ForwarderDeadLetter.objects.values_list("event_id", flat=True)) == ids[3:]


@pytest.mark.django_db
def test_admin_redrive_while_another_runs_says_so_and_sends_nothing(staff):
    from agentfield_site.jobs import leases
    from observability.forwarder import dead_letters

    with LoopbackServer.collector(status=400) as collector:
        configuration.configure(url=collector.url, secret="s", headers={}, enabled=True, event_types=["*"])
        events.publish_many(events.build("node.online") for _ in range(2))
        runner.run(seconds=5, linger=0)
        collector.reset()
        collector.default.status = 200
        assert leases.acquire(dead_letters.REDRIVE_LEASE, "another-redrive", 60)
        chosen = list(ForwarderDeadLetter.objects.values_list("id", flat=True))
        response = staff.post(
            "/admin/observability/forwarderdeadletter/",
            {"action": "redrive_selected", "_selected_action": chosen},
            follow=True,
        )
        assert "Another redrive is sending the dead letters" in response.content.decode()
        assert collector.requests == [] and ForwarderDeadLetter.objects.count() == 2
