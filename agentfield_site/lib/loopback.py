"""Whether a host name or address means this machine only (loopback)."""

import ipaddress


def is_loopback(host: str) -> bool:
    """True for `localhost` (and `*.localhost`) and loopback IPs; False for `0.0.0.0`/`::` (every interface)."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
