"""Headless Chromium on the live dashboard: an execution turns `succeeded` without a reload.

Real daphne, qcluster and demo-agent processes; a staff user logs in through the
admin login page; the execution is submitted through the API with a completion
webhook to a receiver on loopback, and the page shows the webhook delivered too.
"""

import re
import shutil
from pathlib import Path

import pytest
import requests
from django.contrib.admin.utils import quote
from django.contrib.auth.models import User
from django.urls import reverse

from devtools.loopback import LoopbackServer, Reply
from devtools.processes import ROOT
from devtools.waiting import wait_for

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.processes,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Debian chromium is not installed at {CHROMIUM}"),
]


def submit(base: str, webhook: dict) -> str:
    response = requests.post(
        f"{base}/api/v1/execute/async/analyzer.process",
        json={"input": {"document": "watch me succeed"}, "webhook": webhook},
        timeout=5,
    )
    assert response.status_code == 202, response.text
    return response.json()["execution_id"]


def test_dashboard_shows_an_execution_succeed_live(proc_env, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    User.objects.create_user("ops", password="pw-ops-12345", is_staff=True)
    web = proc_env.daphne()
    proc_env.worker()
    agent = proc_env.demo_agent(web.url)
    wait_for(lambda: requests.get(f"{web.url}/api/v1/nodes/analyzer", timeout=2).ok, timeout=30,
             what=f"demo agent registration\n{agent.log()}")
    shot = tmp_path / "dashboard.png"
    with LoopbackServer() as receiver, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{web.url}/dashboard/")
            # Not logged in: the admin login page, then back to the dashboard.
            page.fill("#id_username", "ops")
            page.fill("#id_password", "pw-ops-12345")
            page.click("input[type=submit]")
            page.wait_for_url(f"{web.url}/dashboard/")
            expect(page.locator("#connection")).to_have_text("live", timeout=15_000)
            expect(page.locator("#node-analyzer")).to_contain_text("online", timeout=15_000)
            page.evaluate("window.__sameDocument = true")

            execution_id = submit(web.url, {"url": receiver.url})

            row = page.locator(f"#exec-{execution_id}")
            expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)
            expect(row.locator("td").nth(2)).to_have_text("succeeded")
            expect(row.locator("td").nth(1)).to_have_text("analyzer.process")
            expect(row.locator("td").nth(3)).to_have_text("delivered", timeout=15_000)
            assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
            # The id links to the execution's admin page (ids quoted as the admin quotes them).
            link = row.locator("td").nth(0).locator("a")
            assert link.get_attribute("href") == reverse("admin:executions_execution_change", args=[quote(execution_id)])
            # The live chart counted the finished execution and the delivered webhook.
            expect(page.locator("#chart-executions")).to_have_attribute("data-total", "1", timeout=10_000)
            expect(page.locator("#chart-deliveries rect.bar.delivered")).to_have_count(1)

            receiver.default = Reply(410)
            dead_id = submit(web.url, {"url": receiver.url})
            refused_id = submit(web.url, {"url": "ftp://127.0.0.1/not-http"})
            expect(page.locator(f"#exec-{dead_id} td").nth(3)).to_have_text("dead", timeout=30_000)
            expect(page.locator(f"#exec-{refused_id} td").nth(3)).to_have_text("refused", timeout=15_000)
            expect(page.locator("#chart-deliveries rect.bar.dead")).to_have_count(1)
            page.screenshot(path=str(shot), full_page=True)

            # After a reload: the same states from the API, and the last event at once.
            page.reload()
            expect(page.locator("#last-event")).to_have_text(re.compile(r"^#\d+ \w+\.\w+"))
            expect(page.locator(f"#exec-{dead_id} td").nth(3)).to_have_text("dead", timeout=15_000)
            expect(page.locator(f"#exec-{refused_id} td").nth(3)).to_have_text("refused")
            expect(page.locator(f"#exec-{execution_id} td").nth(3)).to_have_text("delivered")

            # Times of another day carry their date (rows either side of midnight read out of order).
            assert "2020" in page.evaluate("window.agentfieldDashboard.timeOf('2020-01-02T03:04:05Z')")
            assert "2020" not in page.evaluate("window.agentfieldDashboard.timeOf(new Date().toISOString())")
            # Heartbeats are no events: the node list is read again, and the time moves on.
            beat = page.locator("#node-analyzer td").nth(3)
            first = beat.inner_text()
            expect(beat).not_to_have_text(first, timeout=25_000)
        finally:
            browser.close()
    assert shot.stat().st_size > 0
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "dashboard.png")
