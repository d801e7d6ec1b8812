"""The address guard at registration (the connect-time guard is tested through `outbound`)."""

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
