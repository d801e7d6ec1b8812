"""The admin in headless Chromium at 1,280 px: the main columns fit, screenshots saved.

Screenshots go to test-artifacts/admin-*.png (what a reviewer looks at).
"""

from pathlib import Path

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import User
from django.urls import reverse

from devtools.loopback import LoopbackServer, Reply
from devtools.processes import ROOT
from executions import lifecycle, nodes, submission
from tests.webhooks.conftest import drain
from webhooks import subscriptions
from webhooks.models import Delivery

CHROMIUM = "/usr/bin/chromium"
WIDTH = 1280

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Debian chromium is not installed at {CHROMIUM}"),
]


def _execution_with_webhook(url: str) -> str:
    body = {"input": {"document": "screenshots"}, "webhook": {"url": url}}
    execution, _ = submission.submit(submission.Request(target="analyzer.process", **body), enqueue=False)
    lifecycle.transition(execution.id, "running", system=True)
    lifecycle.transition(execution.id, "succeeded", system=True, result={"words": 1})
    return execution.id


@pytest.fixture
def scene(transactional_db, settings):
    """A dead-lettered webhook, a refused one, a retrying one, a subscription."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_RETRY_SCHEDULE = [0.1]
    settings.WEBHOOK_TIMEOUT = 2.0
    User.objects.create_superuser("ops", "ops@example.com", "pw-ops-12345")
    agent = LoopbackServer.agent().run_in_thread()
    nodes.register({"id": "analyzer", "base_url": agent.url, "version": "1.0.0",
                    "reasoners": [{"id": "process", "tags": []}], "skills": []})
    with LoopbackServer(default=Reply(410, body=b"gone")) as receiver:
        dead_id = _execution_with_webhook(receiver.url)
        dead = drain(Delivery.objects.get(execution_id=dead_id))
    settings.WEBHOOK_ALLOWED_HOSTS = []
    refused_id, _ = submission.submit(
        submission.Request(target="analyzer.process", input={}, webhook={"url": "http://127.0.0.1:9/"}),
        enqueue=False,
    )
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    subscriptions.create(url="http://127.0.0.1:9/hook", event_types=["execution.*"], headers={})
    yield {"dead": dead, "execution_id": dead_id, "refused_id": refused_id.id}
    agent.stop()


def _assert_columns_visible(page, columns: list[str]) -> None:
    """Each column's header lies inside the results box (which scrolls what overflows) and the window."""
    results = page.locator("#changelist .results").bounding_box()
    right = min(WIDTH, results["x"] + results["width"])
    for column in columns:
        header = page.locator(f"th.column-{column}").first
        assert header.is_visible(), column
        box = header.bounding_box()
        assert box is not None and box["x"] + box["width"] <= right + 1, f"{column} is cut off: {box}, {results}"


def test_admin_pages_at_1280px(live_server, scene):
    from playwright.sync_api import expect, sync_playwright

    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    dead = scene["dead"]
    pages = {
        "executions": ("/admin/executions/execution/", ["id", "target", "status", "webhook", "agent_node_id", "created_at"]),
        "deliveries": ("/admin/webhooks/delivery/", [
            "id", "execution_id", "destination", "status", "attempts", "last_status", "next_attempt",
        ]),
        "dead-letters": ("/admin/webhooks/deadletter/", ["execution_id", "destination", "attempts", "last_status", "error", "dead_lettered_at"]),
    }
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 800})
            page.goto(f"{live_server.url}/admin/login/")
            page.fill("#id_username", "ops")
            page.fill("#id_password", "pw-ops-12345")
            page.click("input[type=submit]")
            page.wait_for_url(f"{live_server.url}/admin/")

            for name, (path, columns) in pages.items():
                page.goto(f"{live_server.url}{path}")
                _assert_columns_visible(page, columns)
                page.screenshot(path=str(artifacts / f"admin-{name}.png"), full_page=True)

            page.goto(f"{live_server.url}/admin/executions/execution/")
            expect(page.locator(".webhook-dead")).to_have_text("dead")
            expect(page.locator(".webhook-refused")).to_have_text("refused")

            page.goto(live_server.url + reverse("admin:executions_execution_change", args=[quote(scene["execution_id"])]))
            expect(page.locator("fieldset h2", has_text="Webhook")).to_be_visible()
            expect(page.locator("table.related a", has_text=dead.webhook_id)).to_be_visible()
            expect(page.locator("table.related", has_text="execution.completed")).to_be_visible()
            page.screenshot(path=str(artifacts / "admin-execution.png"), full_page=True)

            page.goto(live_server.url + reverse("admin:webhooks_delivery_change", args=[quote(dead.pk)]))
            expect(page.get_by_text("attempt 1", exact=True)).to_be_visible()
            assert page.locator("input[name=_save]").count() == 0
            assert page.locator("a.deletelink").count() == 0
            page.screenshot(path=str(artifacts / "admin-delivery.png"), full_page=True)

            page.goto(live_server.url + reverse("admin:webhooks_deadletter_change", args=[quote(dead.pk)]))
            expect(page.locator("#redrive")).to_be_visible()
            page.screenshot(path=str(artifacts / "admin-dead-letter.png"), full_page=True)
            page.click("#redrive")
            expect(page.locator(".messagelist")).to_contain_text("is queued again")

            page.goto(f"{live_server.url}/admin/webhooks/subscription/add/")
            page.fill("#id_url", "http://127.0.0.1:9/from-admin")
            page.fill("#id_event_types", '["node.*"]')
            page.screenshot(path=str(artifacts / "admin-subscription-add.png"), full_page=True)
            page.click("input[name=_save]")
            expect(page.locator(".messagelist")).to_contain_text("whsec_")
        finally:
            browser.close()
    assert Delivery.objects.get(pk=dead.pk).status == Delivery.Status.PENDING
