"""The admin: node and execution lists with their filters, read-only detail, cancel action."""

import threading

import pytest
from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils.module_loading import import_string
from django_q.brokers import get_broker
from django_q.signing import SignedPackage

from executions import submission
from executions.models import Execution
from observability.models import PlatformEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests")
    client.force_login(user)
    return client


def _submit(webhook=None) -> Execution:
    body = {"input": {}, **({"webhook": webhook} if webhook else {})}
    execution, _ = submission.submit(submission.Request(target="analyzer.process", **body), enqueue=False)
    return execution


def test_lists_filters_and_search(staff, node):
    execution = _submit()
    base = "/admin/executions/execution/"
    for query in ("", "?status__exact=queued", "?agent_node_id=analyzer", "?target=analyzer.process",
                  f"?q={execution.id}", "?created_at__gte=2020-01-01+00:00:00%2B00:00"):
        response = staff.get(base + query)
        assert response.status_code == 200, query
        assert execution.id in response.content.decode(), query
    assert staff.get("/admin/executions/agentnode/").status_code == 200
    assert staff.get("/admin/executions/agentnode/analyzer/change/").status_code == 200


def test_execution_detail_is_read_only_and_hides_the_secret(staff, node, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    execution = _submit({"url": "http://127.0.0.1:9/h", "secret": "very-secret-value"})
    # Quoted as the admin's own links are: an id like "exec_22…" is otherwise read as an escape.
    change = reverse("admin:executions_execution_change", args=[quote(execution.id)])
    response = staff.get(change)
    assert response.status_code == 200
    assert "very-secret-value" not in response.content.decode()
    staff.post(change, {"status": "succeeded"})
    execution.refresh_from_db()
    assert execution.status == "queued", "status changes only through the state machine"


def test_cancel_action(staff, node):
    execution = _submit()
    response = staff.post(
        "/admin/executions/execution/", {"action": "cancel_selected", "_selected_action": [execution.id]}, follow=True
    )
    assert response.status_code == 200
    execution.refresh_from_db()
    assert execution.status == "cancelled"
    assert PlatformEvent.objects.filter(type="execution.cancelled", execution_id=execution.id).exists()


def test_bulk_cancel_tells_the_agents_from_one_queued_task(
    staff, node, agent, settings, django_capture_on_commit_callbacks
):
    broker = get_broker(settings.DISPATCH_CLUSTER)
    broker.purge_queue()
    ids = [_submit().id for _ in range(3)]
    Execution.objects.filter(pk__in=ids).update(status="running")  # queued ones owe the agent no notice
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = staff.post(
                "/admin/executions/execution/", {"action": "cancel_selected", "_selected_action": ids}, follow=True
            )
        assert response.status_code == 200
        assert set(Execution.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"cancelled"}
        assert not [t for t in threading.enumerate() if t.name.startswith("cancel-")], "no thread per execution"
        assert broker.queue_size() == 1
        ((_, package),) = broker.dequeue()
        task = SignedPackage.loads(package)
        import_string(task["func"])(*task["args"])  # what the dispatch cluster's worker does
    finally:
        broker.purge_queue()
    paths = sorted(r.path for r in agent.requests)
    assert paths == sorted(f"/_internal/executions/{i}/cancel" for i in ids)


def _finish(execution: Execution) -> None:
    from executions import lifecycle

    lifecycle.transition(execution.id, "running", system=True)
    lifecycle.transition(execution.id, "succeeded", system=True, result={"ok": True})


def test_execution_page_in_fieldsets_with_deliveries_and_events(staff, node, settings):
    from devtools.loopback import LoopbackServer, Reply
    from tests.webhooks.conftest import drain
    from webhooks.models import Delivery

    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_RETRY_SCHEDULE = [0.1]
    with LoopbackServer(default=Reply(503)) as receiver:
        execution = _submit({"url": receiver.url})
        _finish(execution)
        row = drain(Delivery.objects.get(execution_id=execution.id))
    assert row.status == Delivery.Status.DEAD
    page = staff.get(reverse("admin:executions_execution_change", args=[quote(execution.id)])).content.decode()
    for legend in ("Webhook", "Input and result", "Events", "Times", "Workflow", "Dispatch"):
        assert f">{legend}<" in page, legend
    assert reverse("admin:webhooks_delivery_change", args=[quote(row.pk)]) in page
    assert row.webhook_id in page and "HTTP 503" in page
    for event_type in ("execution.created", "execution.started", "execution.completed"):
        assert event_type in page
    assert 'class="webhook-dead"' in page
    listing = staff.get("/admin/executions/execution/").content.decode()
    assert 'class="webhook-dead"' in listing
    assert 'name="_save"' not in page and "deletelink" not in page


def test_a_refused_webhook_shows_as_refused(staff, node, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    execution = _submit({"url": "http://127.0.0.1:9/h"})  # loopback, not allowed here
    assert execution.webhook_error
    listing = staff.get("/admin/executions/execution/").content.decode()
    assert 'class="webhook-refused"' in listing
    page = staff.get(reverse("admin:executions_execution_change", args=[quote(execution.id)])).content.decode()
    assert 'class="webhook-refused"' in page and execution.webhook_error[:30] in page


def test_node_and_target_are_searched_not_filtered(staff, node):
    execution = _submit()
    listing = staff.get("/admin/executions/execution/").content.decode()
    assert "By agent node id" not in listing and "By target" not in listing
    assert execution.id in staff.get("/admin/executions/execution/", {"q": "analyzer.process"}).content.decode()


def test_a_nodes_calls_in_flight_against_its_cap(staff, node, settings):
    from executions import dispatch

    settings.AGENT_MAX_CALLS_PER_NODE = 3
    for _ in range(3):
        _submit()
    dispatch.claim_next()
    dispatch.claim_next()
    page = staff.get("/admin/executions/agentnode/").content.decode()
    assert '<td class="field-calls">2 / 3</td>' in page
    assert "2 / 3" in staff.get("/admin/executions/agentnode/analyzer/change/").content.decode()
