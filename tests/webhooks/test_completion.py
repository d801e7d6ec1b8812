"""What executions call: webhook validation, one delivery per execution, webhook_events."""

from datetime import timedelta

import pytest
from django.db import transaction

from devtools.loopback import LoopbackServer, Reply
from tests.webhooks.conftest import completion_payload, drain, enqueue
from webhooks.completion import enqueue_completion, validate_webhook, webhook_events
from webhooks.models import Delivery

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("http://x", "must be an object"),
        ({}, "url is required"),
        ({"url": "ftp://example.com/"}, "scheme"),
        ({"url": "https://user:pw@example.com/"}, "credentials"),
        ({"url": "http://169.254.169.254/"}, "link-local"),
        ({"url": "https://93.184.216.34/", "headers": {f"X-{i}": "v" for i in range(21)}}, "at most 20"),
        ({"url": "https://93.184.216.34/", "headers": {"X-Long": "v" * 513}}, "longer than 512"),
        ({"url": "https://93.184.216.34/", "headers": {"X-Bad": "a\r\nInjected: 1"}}, "control"),
        ({"url": "https://93.184.216.34/", "headers": {"X-Bad": "a\x0bb"}}, "control"),
        ({"url": "https://93.184.216.34/", "headers": {"X-Bad": "a\x7fb"}}, "control"),
        ({"url": "https://93.184.216.34/", "headers": {"X-Bad": "a\x85b"}}, "non-ASCII"),
        ({"url": "https://93.184.216.34/", "headers": {"X-Bad": "café"}}, "non-ASCII"),
        ({"url": "https://93.184.216.34/", "headers": {"X Bad": "v"}}, "may only hold"),
        ({"url": "https://93.184.216.34/", "headers": {"X-Bad:": "v"}}, "may only hold"),
        ({"url": "https://93.184.216.34/", "headers": {"X-A": "1", "x-a": "2"}}, "twice"),
        ({"url": "https://93.184.216.34/", "headers": {"X-AgentField-Signature": "x"}}, "reserved"),
        ({"url": "https://93.184.216.34/", "headers": {"Webhook-Id": "x"}}, "reserved"),
        ({"url": "https://93.184.216.34/", "headers": {"content-type": "text/plain"}}, "reserved"),
        ({"url": "https://93.184.216.34/", "headers": {"Host": "evil"}}, "reserved"),
        ({"url": "https://93.184.216.34/", "headers": {"Content-Length": "1"}}, "reserved"),
        *(
            ({"url": "https://93.184.216.34/", "headers": {name: "x"}}, "reserved")
            for name in (
                "Transfer-Encoding", "Connection", "Keep-Alive", "TE", "Trailer", "Upgrade", "Expect",
                "Proxy-Authorization", "proxy-connection",
            )
        ),
        ({"url": "https://93.184.216.34/", "secret": "s" * 4097}, "4096"),
        ({"url": "https://93.184.216.34/", "secret": 5}, "string"),
    ],
)
def test_validate_webhook_refuses(value, reason, webhook_settings):
    webhook_settings.WEBHOOK_ALLOWED_HOSTS = []
    hook, error = validate_webhook(value)
    assert hook is None and reason in error


def test_ordinary_headers_stay_allowed():
    hook, error = validate_webhook({
        "url": "http://127.0.0.1:9/h",
        "headers": {"Authorization": "Bearer abc.def", "X-Tenant": "acme", "User-Agent": "mine/1"},
    })
    assert error is None and hook["headers"]["Authorization"] == "Bearer abc.def"


def test_validate_webhook_normalizes():
    assert validate_webhook(None) == (None, None)
    hook, error = validate_webhook({"url": " http://127.0.0.1:9/h ", "secret": "whsec_x", "headers": {"X-N": 5}})
    assert error is None
    assert hook == {"url": "http://127.0.0.1:9/h", "secret": "whsec_x", "headers": {"X-N": "5"}}


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled", "timeout"])
def test_one_delivery_per_execution_for_every_terminal_status(status):
    for _ in range(2):  # an agent reporting its result twice
        with transaction.atomic():
            enqueue_completion(
                execution_id="exec_t", url="http://127.0.0.1:9/", secret="", headers={},
                payload=completion_payload("exec_t", status),
            )
    row = Delivery.objects.get(execution_id="exec_t")
    assert row.event_type == ("execution.completed" if status == "succeeded" else "execution.failed")
    assert row.kind == Delivery.Kind.COMPLETION and row.status == Delivery.Status.PENDING


def test_enqueue_rolls_back_with_the_transaction():
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue_completion(execution_id="exec_r", url="http://127.0.0.1:9/", secret="", headers={},
                           payload=completion_payload("exec_r"))
        raise RuntimeError("the execution update failed")
    assert not Delivery.objects.filter(execution_id="exec_r").exists()


def test_webhook_events_lists_attempts():
    assert webhook_events([]) == {}
    with LoopbackServer(Reply(500, body=b"down")) as receiver:
        waiting = enqueue("http://127.0.0.1:9/", execution_id="exec_pending")
        Delivery.objects.filter(id=waiting.id).update(next_attempt_at=waiting.created_at + timedelta(hours=1))
        drain(enqueue(receiver.url, execution_id="exec_done"))
    events = webhook_events(["exec_done", "exec_pending", "exec_none"])
    assert events["exec_none"] == []
    [pending] = events["exec_pending"]
    assert pending["status"] == "pending" and pending["http_status"] is None
    failed, delivered = events["exec_done"]
    assert failed["status"] == "failed" and failed["http_status"] == 500 and failed["error_message"] == "HTTP 500"
    assert delivered["status"] == "delivered" and delivered["http_status"] == 200
    assert delivered["event_type"] == "execution.completed" and delivered["created_at"].endswith("Z")
    assert set(delivered) == {"id", "event_type", "status", "http_status", "error_message", "created_at"}


def test_webhook_events_say_dead_for_a_dead_letter():
    with LoopbackServer(default=Reply(410, body=b"gone")) as receiver:
        row = drain(enqueue(receiver.url, execution_id="exec_dead"))
    assert row.status == Delivery.Status.DEAD
    [dead] = webhook_events(["exec_dead"])["exec_dead"]
    assert dead["status"] == "dead" and dead["http_status"] == 410
