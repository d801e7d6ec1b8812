"""The address guard at registration (the connect-time guard is tested through `outbound`)."""

import threading
import time

import pytest
from django.test import override_settings

from agentfield_site.lib import safe_http


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
        # Special-purpose blocks that Python before 3.11.10 / 3.12.4 counted as global.
        "http://192.0.0.192/",
        "http://192.0.0.8/",
        "http://[2001:2::1]/",
        "http://[3fff::1]/",
        "ftp://example.com/",
        "http://user:pw@example.com/",
        "http:///nohost",
        # Names no server has: stored, they would only ever fail as "cannot resolve".
        "http://exa mple.com/",
        "http://ex%00ample.com/",
        "http://a..b/",
        "http://" + "a" * 64 + ".example.com/",
        "https://93.184.216.34:0/hook",  # port 0: nothing listens there (it was sent to 443)
        # A number and a dot: no resolver reads these as addresses, so they only ever failed to resolve.
        "http://127.1./", "http://0x7f000001.:9/", "http://2130706433./", "http://0177.0.0.01./",
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


@override_settings(WEBHOOK_ALLOWED_HOSTS=["my_agent", "hooks.example.com", "xn--strae-oqa.de"])
def test_check_url_accepts_the_host_names_resolvers_take():
    for url in ("http://my_agent:8000/", "https://hooks.example.com./h", "https://straße.de/h"):
        safe_http.check_url(url)


@override_settings(WEBHOOK_ALLOWED_HOSTS=[])
def test_an_allow_list_of_its_own_matches_networks_by_the_resolved_address():
    """Agents pass AGENT_ALLOWED_HOSTS: addresses and networks match whatever the spelling resolves to."""
    from devtools.loopback import LoopbackServer

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
    with LoopbackServer() as receiver:
        hex_url = f"http://0x7f000001:{receiver.port}/hook"
        allowed = safe_http.new_session(allowed_hosts=loopback).post(hex_url, data=b"{}", timeout=2)
        assert allowed.status_code == 200
        with pytest.raises(safe_http.UnsafeURL, match="loopback"):
            safe_http.new_session(allowed_hosts=["10.0.0.0/8"]).post(hex_url, data=b"{}", timeout=2)
        assert len(receiver.requests) == 1


def test_a_registration_lookup_that_hangs_costs_the_request_two_seconds_and_is_left_to_connect_time(monkeypatch):
    """A name server that never answers cannot hold request threads (the system resolver is replaced: none runs here)."""
    gate = threading.Event()
    real = safe_http._resolve

    def hanging(host: str, port: int):
        if host.endswith("slow.test"):
            gate.wait(30)
            raise OSError("gave up")
        return real(host, port)

    monkeypatch.setattr(safe_http, "_resolve", hanging)
    monkeypatch.setattr(safe_http, "REGISTRATION_LOOKUP_WAIT", 0.3)
    try:
        started = time.monotonic()
        for n in range(12):  # more than the lookup threads: the later ones wait in line, as long at most
            safe_http.check_url(f"http://h{n}.slow.test/hook", allowed_hosts=[])
        assert time.monotonic() - started < 12 * 0.3 + 1.0
    finally:
        gate.set()
    with pytest.raises(safe_http.BlockedAddress):  # a name that resolves in time is still judged
        safe_http.check_url("http://localhost/hook", allowed_hosts=[])
