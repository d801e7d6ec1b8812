"""Webhook signatures: `X-AgentField-Signature` and the Standard Webhooks headers.

Pure functions, no models. The body is signed exactly as sent; callers pass the
bytes they put on the wire and never re-serialize them.
"""

import base64
import binascii
import functools
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"


class SignatureError(ValueError):
    """A webhook failed verification: missing headers, stale timestamp or no matching signature."""


def generate_secret() -> str:
    """A fresh secret: "whsec_" + base64 of 32 random bytes (what standardwebhooks expects)."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")


@functools.lru_cache(maxsize=1024)  # one decoding per secret, not one per attempt
def standard_key(secret: str) -> bytes:
    """The HMAC key `standardwebhooks.Webhook(secret)` derives from a secret string.

    Strip "whsec_", then decode leniently after appending "==" exactly as the
    library does, so receivers can pass the very string they registered. Secrets
    that are not base64 (the library would raise) use their UTF-8 bytes.
    """
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded + "==")
    except (binascii.Error, ValueError):
        key = b""
    return key or secret.encode("utf-8")


def agentfield_signature(body: bytes, secret: str) -> str:
    """`sha256=<hex>` over the body, keyed by the UTF-8 bytes of the secret (as AgentField does)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def standard_signature(body: bytes, msg_id: str, timestamp: int, secret: str) -> str:
    """`v1,<base64>` over "{id}.{timestamp}.{body}" (Standard Webhooks)."""
    message = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign(body: bytes, msg_id: str, secrets: Sequence[str], timestamp: int | None = None) -> dict[str, str]:
    """The signature headers for one attempt.

    `secrets` are the active secrets, current first: `X-AgentField-Signature` uses
    the current one, `webhook-signature` carries one `v1,` per secret so receivers
    on either side of a rotation verify. No secrets: id and timestamp only.
    """
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    active = [s for s in secrets if s]
    if active:
        headers["X-AgentField-Signature"] = agentfield_signature(body, active[0])
        headers["webhook-signature"] = " ".join(
            standard_signature(body, msg_id, timestamp, s) for s in active
        )
    return headers


def _same(expected: str, given: str) -> bool:
    """Constant-time equality; a header with non-ASCII text (which `compare_digest` refuses for str) matches nothing."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


def verify(
    body: bytes, headers: Mapping[str, str], secret: str, tolerance: int = 300, *, allow_unstamped: bool = False
) -> None:
    """Receiver side: return if the request's signature matches, raise `SignatureError` if not.

    `webhook-signature` is checked with its id and timestamp (within `tolerance`
    seconds, against replay), as `standardwebhooks` checks it. A request that
    carries only `X-AgentField-Signature` is refused unless `allow_unstamped`:
    that header signs the body alone, so a delivery captured once passes it
    again forever, with its `webhook-*` headers stripped. A receiver written for
    AgentField's header alone opts in, knowing it; every delivery from here
    carries both.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    standard = lower.get("webhook-signature")
    legacy = lower.get("x-agentfield-signature")
    if standard:
        if not (msg_id and stamp):
            raise SignatureError("webhook-id and webhook-timestamp are required with webhook-signature")
        try:
            timestamp = int(stamp)
        except ValueError as exc:
            raise SignatureError("webhook-timestamp is not an integer") from exc
        if tolerance and abs(time.time() - timestamp) > tolerance:
            raise SignatureError("webhook-timestamp is outside the tolerance window")
        expected = standard_signature(body, msg_id, timestamp, secret)
        if any(_same(expected, candidate) for candidate in standard.split(" ")):
            return
        raise SignatureError("no matching webhook-signature")
    if legacy and not allow_unstamped:
        raise SignatureError(
            "webhook-signature is missing: X-AgentField-Signature alone has no timestamp and could be a replay "
            "(verify(..., allow_unstamped=True) accepts it)"
        )
    if legacy:
        if _same(agentfield_signature(body, secret), legacy.strip()):
            return
        raise SignatureError("X-AgentField-Signature does not match")
    raise SignatureError("no signature headers")
