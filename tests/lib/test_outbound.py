"""The outbound client: one attempt, guarded at connect time, no redirects, capped bodies, one verdict."""

import threading
import time

import pytest
from django.test import override_settings

from agentfield_site.lib import outbound
from devtools.loopback import Blackhole, LoopbackServer, Reply
from devtools.nameserver import StubNameServer
from devtools.processes import free_port
from devtools.waiting import wait_for


def send(url: str, body: bytes = b"{}", timeout: float = 2.0, **fields) -> outbound.Outcome:
    return outbound.client().send(outbound.Request(url, body, "whd_test", timeout=timeout, **fields))


@override_settings(WEBHOOK_ALLOWED_HOSTS=[])
def test_connect_time_guard_refuses_loopback_names_and_spellings():
    with LoopbackServer() as receiver:
        port = receiver.port
        for url in (
            receiver.url,
            f"http://localhost:{port}/hook",  # a name that resolves to loopback now (rebinding)
            f"http://0x7f000001:{port}/hook",  # a spelling that is no IP literal to the client
            f"http://[::ffff:127.0.0.1]:{port}/hook",
        ):
            outcome = send(url)
            assert outcome.status is None and outcome.error.startswith("blocked"), (url, outcome)
            assert "loopback" in outcome.error
            assert outbound.classify(outcome) == outbound.Verdict.BLOCKED
            assert not outbound.destination_failed(outcome)
        assert receiver.requests == []


@override_settings(WEBHOOK_ALLOWED_HOSTS=[])
def test_metadata_address_refused_without_a_connection():
    outcome = send("http://169.254.169.254/latest/meta-data/")
    assert outcome.status is None and "link-local" in outcome.error


@override_settings(WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"])
def test_redirect_not_followed_and_signed_headers_sent():
    with LoopbackServer(Reply(302, {"Location": "http://169.254.169.254/"}, b"moved")) as receiver:
        outcome = send(
            receiver.url, b'{"a":1}', secrets=["whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="],
            headers={"Authorization": "Bearer t"},
        )
        assert outcome.status == 302 and outcome.body == "moved"
        assert outcome.headers["Location"] == "http://169.254.169.254/"
        assert outcome.describe() == "HTTP 302: redirects are not followed"
        assert outbound.classify(outcome) == outbound.Verdict.REFUSED
        [request] = receiver.requests
        assert request.body == b'{"a":1}'
        assert request.headers["Authorization"] == "Bearer t"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["User-Agent"] == outbound.USER_AGENT
        assert request.headers["webhook-id"] == "whd_test"
        assert request.headers["webhook-signature"].startswith("v1,")
        assert request.headers["X-AgentField-Signature"].startswith("sha256=")


@override_settings(WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"], WEBHOOK_RESPONSE_BODY_LIMIT=10)
def test_response_body_capped_and_timeout_reported():
    with LoopbackServer(Reply(200, {"Retry-After": "3"}, b"x" * 100_000), Reply(200, delay=3.0)) as receiver:
        outcome = send(receiver.url)
        assert outcome.ok and outcome.body == "x" * 10 and outcome.retry_after == "3"
        slow = send(receiver.url, timeout=0.3)
        assert slow.status is None and "timeout" in slow.error and slow.unreachable
        assert 250 <= slow.duration_ms < 2500  # gave up long before the receiver answered
        assert outbound.classify(slow) == outbound.Verdict.RETRY


@override_settings(WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"])
def test_connection_refused_is_an_outcome_not_an_exception():
    outcome = send(f"http://127.0.0.1:{free_port()}/")
    assert outcome.status is None and outcome.error.startswith("connection error")
    assert outbound.destination_failed(outcome) and outbound.classify(outcome) == outbound.Verdict.RETRY


@override_settings(WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"])
def test_many_slow_requests_share_one_thread():
    """A hundred requests to a receiver that never answers cost sockets, not threads."""
    before = threading.active_count()
    with Blackhole() as blackhole:
        client = outbound.client()
        futures = [client.submit(outbound.Request(blackhole.url, b"{}", f"whd_{i}", timeout=1.0)) for i in range(100)]
        assert threading.active_count() <= before + 1
        outcomes = [f.result(timeout=10) for f in futures]
        assert blackhole.connections == 100
    assert all("timeout" in o.error for o in outcomes)


@override_settings(WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"])
def test_a_started_group_can_be_cut_off_and_reports_nothing_after():
    """A stopping sender hands its rows back: their attempts must end, and report nothing."""
    reported: list[int] = []
    with Blackhole() as blackhole:
        started = outbound.client().start(
            [outbound.Request(blackhole.url, b"{}", f"whd_cut_{i}", timeout=30.0) for i in range(5)],
            lambda index, outcome: reported.append(index),
        )
        wait_for(lambda: blackhole.connections == 5, timeout=10, what="five connections")
        started.cancel()
        wait_for(lambda: not started._running, timeout=5, what="the attempts to end")
    assert reported == []


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "DELIVERED"), (204, "DELIVERED"), (301, "REFUSED"), (400, "REFUSED"), (404, "REFUSED"),
     (410, "GONE"), (429, "RETRY"), (500, "RETRY"), (503, "RETRY")],
)
def test_one_classification(status, verdict):
    assert outbound.classify(outbound.Outcome(status=status)) == outbound.Verdict[verdict]
    assert outbound.destination_failed(outbound.Outcome(status=status)) == (status >= 500)


@pytest.mark.parametrize(
    ("url", "destination"),
    [
        ("https://Example.com/hook?a=1", "https://example.com:443"),
        ("http://example.com/hook", "http://example.com:80"),
        ("http://127.0.0.1:9000/x", "http://127.0.0.1:9000"),
        ("http://[::1]:8080/x", "http://[::1]:8080"),
    ],
)
def test_destination_of(url, destination):
    assert outbound.destination_of(url) == destination


@override_settings(WEBHOOK_ALLOWED_HOSTS=["127.0.0.0/8"])
def test_a_network_in_the_allow_list_admits_its_addresses_at_connect_time():
    with LoopbackServer() as receiver:
        port = receiver.port
        for url in (receiver.url, f"http://localhost:{port}/hook"):
            assert send(url).ok, url
        assert len(receiver.requests) == 2
    assert send("http://169.254.169.254/").error.startswith("blocked")


def test_a_name_server_that_never_answers_holds_up_no_one_elses_lookups(settings):
    """One key may name any number of hosts whose name server is down: their lookups cost timers, not threads."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    with StubNameServer(answers={"fast.test": "127.0.0.1"}, silent={"slow.test"}) as names, LoopbackServer() as receiver:
        settings.WEBHOOK_NAMESERVERS = [names.address]
        client = outbound.client()
        stuck = [outbound.Request(f"http://h{n}.slow.test:{receiver.port}/hook", b"{}", f"whd_slow_{n}", timeout=3.0)
                 for n in range(40)]
        ended: list[outbound.Outcome] = []
        client.start(stuck, lambda index, outcome: ended.append(outcome))
        wait_for(lambda: len({q for q in names.queries if q.endswith("slow.test")}) >= 40, timeout=5,
                 what="every slow lookup to be under way")
        started = time.monotonic()
        healthy = send(f"http://ok.fast.test:{receiver.port}/hook", timeout=3.0)
        assert healthy.status == 200, healthy
        assert time.monotonic() - started < 1.0
        assert len(receiver.requests) == 1 and not ended  # the slow ones are still looking
        wait_for(lambda: len(ended) == 40, timeout=10, what="the slow attempts to end")
        assert all(o.status is None and o.unreachable for o in ended)
    assert outbound.classify(send(f"http://nowhere.test:{receiver.port}/hook")) != outbound.Verdict.DELIVERED


def test_a_name_that_does_not_resolve_is_a_connection_error(settings):
    with StubNameServer() as names:
        settings.WEBHOOK_NAMESERVERS = [names.address]
        outcome = send("http://nowhere.test/hook")
    assert outcome.status is None and outcome.unreachable
    assert outcome.error.startswith("connection error: cannot resolve nowhere.test")


@pytest.mark.parametrize("host", ["evil.test\x00.com", "127.0.0.1\x00", "127.0.0.1 x", "a\x01b.test"])
def test_a_host_that_is_no_name_is_a_clean_connection_error(settings, host):
    """Not an internal error (inet_aton raised ValueError on a NUL), nor a lookup of part of the name."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.0/8"]
    with StubNameServer(answers={"evil.test": "127.0.0.1"}) as names, LoopbackServer() as receiver:
        settings.WEBHOOK_NAMESERVERS = [names.address]
        outcome = send(f"http://{host}:{receiver.port}/hook")
        assert outcome.status is None and outcome.unreachable, outcome
        assert outcome.error.startswith("connection error: cannot resolve"), outcome
        assert receiver.requests == [] and names.queries == []
