"""The API docs (Swagger UI, ReDoc) load from the project's own static files, with no other host."""

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/"])
def test_docs_pages_reference_only_local_assets(client, path):
    response = client.get(path)
    assert response.status_code == 200
    # Whatever the bundles reference at run time (ReDoc's vendor logo) stays unloaded.
    assert "default-src 'self'" in response["Content-Security-Policy"]
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    for asset in assets:
        assert not urlsplit(asset).netloc, f"{path} loads {asset} from another host"
        assert client.get(asset).status_code == 200, asset


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/"])
def test_a_browser_refused_the_docs_is_told_to_log_in(client, admin_user, settings, path):
    settings.API_KEYS = ["docs-key"]
    refused = client.get(path, HTTP_ACCEPT="text/html")
    assert refused.status_code == 401
    assert "default-src 'self'" in refused["Content-Security-Policy"]
    assert f'href="/admin/login/?next={path}"' in refused.content.decode()
    client.force_login(admin_user)
    assert client.get(path).status_code == 200


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Debian chromium is not installed at {CHROMIUM}")
@pytest.mark.parametrize(
    ("path", "title"),
    [("/api/docs/", ".swagger-ui .info .title"), ("/api/redoc/", ".api-info h1")],
)
def test_docs_render_in_chromium_with_every_other_host_blocked(live_server, path, title):
    from playwright.sync_api import expect, sync_playwright

    own = urlsplit(live_server.url).netloc
    elsewhere: list[str] = []

    def only_our_host(route):
        if urlsplit(route.request.url).netloc == own:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.route("**/*", only_our_host)
            page.goto(f"{live_server.url}{path}")
            expect(page.locator(title)).to_contain_text("AgentField control plane", timeout=20_000)
        finally:
            browser.close()
    assert elsewhere == []
