"""Headless Chromium on the live dashboard: an execution turns `succeeded` without a reload.

Real daphne, qcluster and demo-agent processes; a staff user logs in through the
admin login page; the execution is submitted through the API with a completion
webhook to a receiver on loopback, and the page shows the webhook delivered too.
"""

import shutil
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import User

from tests.support.processes import ROOT, wait_for
from tests.webhooks.receiver import Receiver

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.processes,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Debian chromium is not installed at {CHROMIUM}"),
]


def test_dashboard_shows_an_execution_succeed_live(proc_env, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    User.objects.create_user("ops", password="pw-ops-12345", is_staff=True)
    web = proc_env.daphne()
    proc_env.worker()
    agent = proc_env.demo_agent(web.url)
    wait_for(lambda: requests.get(f"{web.url}/api/v1/nodes/analyzer", timeout=2).ok, timeout=30,
             what=f"demo agent registration\n{agent.log()}")
    shot = tmp_path / "dashboard.png"
    with Receiver() as receiver, sync_playwright() as pw:
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

            response = requests.post(
                f"{web.url}/api/v1/execute/async/analyzer.process",
                json={"input": {"document": "watch me succeed"}, "webhook": {"url": receiver.url}},
                timeout=5,
            )
            assert response.status_code == 202, response.text
            execution_id = response.json()["execution_id"]

            row = page.locator(f"#exec-{execution_id}")
            expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)
            expect(row.locator("td").nth(2)).to_have_text("succeeded")
            expect(row.locator("td").nth(1)).to_have_text("analyzer.process")
            expect(row.locator("td").nth(3)).to_have_text("delivered", timeout=15_000)
            assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 0
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "dashboard.png")
