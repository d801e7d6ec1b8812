"""Secure defaults: serve listens on loopback unless HOST says otherwise and will not open
an unauthenticated API to the network; the checks and the deploy checks; the CSP."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from agentfield_site.apps import check_settings
from agentfield_site.models import ApiKey
from devtools.processes import free_port
from devtools.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _non_loopback_address() -> str | None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.255", 9))  # no packet is sent: this only picks a route
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


@pytest.mark.processes
def test_serve_refuses_a_network_address_without_an_api_key(proc_env):
    # The demo agent's key from an earlier `make run` is not a key that closes the API.
    ApiKey.create("demo-agent", ApiKey.Scope.AGENT, demo=True)
    env = {**proc_env.env, "HOST": "0.0.0.0", "API_KEYS": ""}
    done = subprocess.run(
        [sys.executable, "manage.py", "serve", "--no-agent", "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "Refusing to listen on 0.0.0.0" in done.stderr and "API_KEYS" in done.stderr, done.stderr
    assert "HOST=127.0.0.1" in done.stderr



@pytest.mark.processes
def test_serve_migrate_refuses_a_network_address_on_a_fresh_database(proc_env, tmp_path):
    # `serve --migrate` (what `make run` runs) on a database with no tables yet: the keys are
    # asked about once it is migrated (it crashed with "no such table" before).
    env = {**proc_env.env, "HOST": "0.0.0.0", "API_KEYS": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite3'}"}
    done = subprocess.run(
        [sys.executable, "manage.py", "serve", "--migrate", "--no-agent", "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    assert "Refusing to listen on 0.0.0.0" in done.stderr and "Traceback" not in done.stderr, done.stderr

@pytest.mark.processes
def test_serve_listens_on_loopback_by_default(proc_env):
    port = free_port()
    proc_env.env.pop("HOST", None)  # the default is what is tested
    serve = proc_env.script("serve", ["manage.py", "serve", "--no-agent", "--port", str(port)], port)
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok, what=f"serve\n{serve.log()}")
    other = _non_loopback_address()
    if other is not None:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://{other}:{port}/health", timeout=2)
    serve.stop()
    assert f"127.0.0.1:{port}" in serve.log()


@pytest.mark.parametrize(
    ("host", "allowed", "warned"),
    [
        ("127.0.0.1", ["localhost", "127.0.0.1"], False),
        ("0.0.0.0", ["localhost", "hooks.example.com"], True),
        ("192.0.2.10", ["[::1]"], True),
        ("0.0.0.0", ["hooks.example.com"], False),
        ("localhost", ["127.0.0.2"], False),
    ],
)
def test_a_check_warns_when_loopback_is_reachable_from_the_network(settings, host, allowed, warned):
    settings.HOST = host
    settings.WEBHOOK_ALLOWED_HOSTS = allowed
    settings.AGENT_ALLOWED_HOSTS = []  # its loopback default is checked the same way (W002)
    found = [m for m in check_settings(None) if m.id == "agentfield.W002"]
    assert bool(found) is warned
    if warned:
        assert "WEBHOOK_ALLOWED_HOSTS" in found[0].msg and host in found[0].msg


def _manage(args: list[str], **env: str) -> subprocess.CompletedProcess:
    keep = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    # The checkout's .env, which `make run` writes, lets webhooks reach loopback; the
    # environment wins over it, and the documented production configuration sets none.
    unset = {"WEBHOOK_ALLOWED_HOSTS": ""}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**keep, **unset, **env}, capture_output=True, text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_in_the_documented_production_configuration(tmp_path):
    production = {
        "SECRET_KEY": "x" * 20 + "a-long-random-production-secret-key-1234567890",
        "ALLOWED_HOSTS": "agents.example.com",
        "API_KEYS": "k-production",
        "HTTPS": "true",
        "SECURE_PROXY_SSL_HEADER": "true",
        "HOST": "0.0.0.0",
        "AGENT_ALLOWED_HOSTS": "10.0.0.0/8",  # the README's production configuration
        "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
    }
    done = _manage(["check", "--deploy", "--fail-level", "WARNING"], **production)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout
    without_https = _manage(["check", "--deploy"], **{**production, "HTTPS": "false"})
    assert "security.W004" in without_https.stdout + without_https.stderr  # HSTS is what HTTPS turns on
    # HSTS without `preload` unless asked for: the preload list is hard to leave.
    hsts = "from django.conf import settings as s; print(s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD)"
    assert _manage(["shell", "-c", hsts], **production).stdout.split()[-2:] == ["True", "False"]
    preloaded = _manage(["shell", "-c", hsts], **production, SECURE_HSTS_PRELOAD="true")
    assert preloaded.stdout.split()[-2:] == ["True", "True"]


@pytest.mark.django_db
def test_content_security_policy_on_the_admin_and_dashboard_not_the_api(client, django_user_model, settings):
    settings.API_KEYS = []
    for path in ("/admin/login/",):
        assert "script-src 'self'" in client.get(path)["Content-Security-Policy"]
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests"))
    for path in ("/admin/", "/admin/executions/execution/", "/dashboard/"):
        response = client.get(path)
        assert response.status_code == 200
        assert response["Content-Security-Policy"] == settings.CONTENT_SECURITY_POLICY
    assert "Content-Security-Policy" not in client.get("/api/v1/executions")
