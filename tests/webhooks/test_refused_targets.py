"""SSRF: refused at registration and, for names that resolve badly, at connect time."""

import pytest

from devtools.loopback import LoopbackServer
from tests.webhooks.conftest import drain, enqueue
from webhooks.completion import validate_webhook
from webhooks.models import Delivery

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://[::1]:8080/hook",
        "http://localhost:8080/hook",
    ],
)
def test_refused_at_registration(url, webhook_settings):
    webhook_settings.WEBHOOK_ALLOWED_HOSTS = []
    hook, error = validate_webhook({"url": url})
    assert hook is None and "blocked" in error
    assert error.endswith("may reach public addresses or WEBHOOK_ALLOWED_HOSTS"), error


def test_name_resolving_to_loopback_refused_at_connect_time(webhook_settings):
    with LoopbackServer() as receiver:
        port = receiver.port
        row = enqueue(f"http://localhost:{port}/hook")  # registered while allowed, say
        webhook_settings.WEBHOOK_ALLOWED_HOSTS = []
        row = drain(row)
    assert receiver.requests == []
    assert row.status == Delivery.Status.DEAD
    assert all("blocked" in a.error and "loopback" in a.error for a in row.attempt_log.all())


def test_allow_list_exempts_listed_names(webhook_settings):
    webhook_settings.WEBHOOK_ALLOWED_HOSTS = ["localhost"]
    with LoopbackServer() as receiver:
        port = receiver.port
        assert validate_webhook({"url": f"http://localhost:{port}/hook"})[1] is None
        row = drain(enqueue(f"http://localhost:{port}/hook"))
    assert row.status == Delivery.Status.DELIVERED and len(receiver.requests) == 1
