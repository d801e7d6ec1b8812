"""The safe HTTP client: addresses checked at registration and at connect time, no redirects."""

import pytest
from django.test import override_settings

from agentfield_site.lib import safe_http
from tests.webhooks.receiver import Receiver, Reply


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]:8080/",
        "http://localhost:8080/",
        "http://100.64.0.1/",
        "http://[fc00::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "ftp://example.com/",
        "http://user:pw@example.com/",
        "http:///nohost",
    ],
)
@override_settings(WEBHOOK_ALLOWED_HOSTS=[])
def test_check_url_refuses(url):
    with pytest.raises(safe_http.UnsafeURL):
        safe_http.check_url(url)


@override_settings(WEBHOOK_ALLOWED_HOSTS=[])
def test_check_url_accepts_public_addresses():
    safe_http.check_url("https://93.184.216.34/hook")
    safe_http.check_url("https://[2606:4700::1111]/hook")


@override_settings(WEBHOOK_ALLOWED_HOSTS=[])
def test_connect_time_guard_refuses_loopback_names_and_addresses():
    with Receiver() as receiver:
        port = receiver.server.server_address[1]
        session = safe_http.new_session()
        for url in (receiver.url, f"http://localhost:{port}/hook"):
            outcome = safe_http.post(session, url, b"{}", {}, timeout=2)
            assert outcome.status is None
            assert "blocked" in outcome.error and "loopback" in outcome.error
        assert receiver.requests == []


@override_settings(WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"])
def test_allow_listed_host_is_called_and_redirect_not_followed():
    with Receiver(Reply(302, {"Location": "http://169.254.169.254/"}, b"moved")) as receiver:
        session = safe_http.new_session()
        outcome = safe_http.post(session, receiver.url, b'{"a":1}', {"Content-Type": "application/json"}, 2)
        assert outcome.status == 302 and outcome.body == "moved"
        assert outcome.headers["Location"] == "http://169.254.169.254/"
        assert len(receiver.requests) == 1 and receiver.requests[0].body == b'{"a":1}'


@override_settings(WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"], WEBHOOK_RESPONSE_BODY_LIMIT=10)
def test_response_body_truncated_and_timeout_reported():
    with Receiver(Reply(200, {"Retry-After": "3"}, b"x" * 1000), Reply(200, delay=3.0)) as receiver:
        session = safe_http.new_session()
        outcome = safe_http.post(session, receiver.url, b"{}", {}, 2)
        assert outcome.ok and outcome.body == "x" * 10 and outcome.retry_after == "3"
        slow = safe_http.post(session, receiver.url, b"{}", {}, 0.3)
        assert slow.status is None and "timeout" in slow.error
        assert 250 <= slow.duration_ms < 2500  # gave up long before the receiver answered


@override_settings(WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"])
def test_connection_refused_is_an_outcome_not_an_exception():
    from tests.support.processes import free_port

    outcome = safe_http.post(safe_http.new_session(), f"http://127.0.0.1:{free_port()}/", b"", {}, 1)
    assert outcome.status is None and outcome.error.startswith("connection error")


@override_settings(WEBHOOK_ALLOWED_HOSTS=[])
def test_an_allow_list_of_its_own_matches_networks_by_the_resolved_address():
    """Agents pass AGENT_ALLOWED_HOSTS: addresses and networks match whatever the spelling resolves to."""
    loopback = ["127.0.0.0/8", "::1"]
    for url in ("http://0x7f000001:9/x", "http://2130706433:9/x", "http://127.1.2.3:9/", "http://[::1]:9/",
                "http://[::ffff:127.0.0.1]:9/"):
        safe_http.check_url(url, loopback)
        with pytest.raises(safe_http.UnsafeURL):
            safe_http.check_url(url)  # the webhooks' own list (empty here) is unchanged
    with pytest.raises(safe_http.UnsafeURL):
        safe_http.check_url("http://169.254.169.254/", loopback)
    with pytest.raises(safe_http.UnsafeURL):
        safe_http.check_url("http://0x7f000001:9/", ["localhost"])  # a name matches only as spelled
    with Receiver() as receiver:
        port = receiver.server.server_address[1]
        hex_url = f"http://0x7f000001:{port}/hook"
        allowed = safe_http.post(safe_http.new_session(allowed_hosts=loopback), hex_url, b"{}", {}, timeout=2)
        assert allowed.status == 200, allowed.error
        refused = safe_http.post(safe_http.new_session(allowed_hosts=["10.0.0.0/8"]), hex_url, b"{}", {}, timeout=2)
        assert refused.status is None and "loopback" in refused.error
        assert len(receiver.requests) == 1
