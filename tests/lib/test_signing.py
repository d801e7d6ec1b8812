"""Signatures reproduce the shared vectors (tests/lib/vectors) and verify with the standardwebhooks library."""

import base64
import json
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from agentfield_site.lib import signing

# A copy of the external vectors kept in the repository, so a clone anywhere passes.
VECTORS = json.loads((Path(__file__).parent / "vectors" / "signatures.json").read_text())["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_sign_reproduces_vector(vector):
    body = vector["body"].encode("utf-8")
    headers = signing.sign(body, vector["webhook_id"], [vector["secret"]], int(vector["webhook_timestamp"]))
    assert headers["X-AgentField-Signature"] == vector["x_agentfield_signature"]
    assert headers["webhook-signature"] == vector["webhook_signature"]
    assert headers["webhook-id"] == vector["webhook_id"]
    assert headers["webhook-timestamp"] == vector["webhook_timestamp"]
    assert signing.standard_key(vector["secret"]).hex() == vector["standard_webhooks_key_hex"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_verify_accepts_vector(vector):
    body = vector["body"].encode("utf-8")
    headers = {
        "webhook-id": vector["webhook_id"],
        "webhook-timestamp": vector["webhook_timestamp"],
        "webhook-signature": vector["webhook_signature"],
    }
    signing.verify(body, headers, vector["secret"], tolerance=0)
    signing.verify(body, {"X-AgentField-Signature": vector["x_agentfield_signature"]}, vector["secret"],
                   allow_unstamped=True)
    with pytest.raises(signing.SignatureError):
        signing.verify(body + b" ", headers, vector["secret"], tolerance=0)
    with pytest.raises(signing.SignatureError):
        signing.verify(body, headers, vector["secret"])  # the vector's timestamp is stale


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["secret"].startswith("whsec_")], ids=lambda v: v["name"])
def test_standardwebhooks_library_verifies_fresh_signature(vector):
    body = vector["body"].encode("utf-8")
    headers = signing.sign(body, vector["webhook_id"], [vector["secret"]])
    assert Webhook(vector["secret"]).verify(body, headers) == json.loads(vector["body"])


def test_rotation_signs_with_every_secret_and_each_verifies():
    old, new = signing.generate_secret(), signing.generate_secret()
    body = b'{"ok":true}'
    headers = signing.sign(body, "msg_1", [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        Webhook(secret).verify(body, headers)
        signing.verify(body, headers, secret)
    assert headers["X-AgentField-Signature"] == signing.agentfield_signature(body, new)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(body, headers)


def test_no_secret_no_signature():
    headers = signing.sign(b"{}", "msg_2", [])
    assert set(headers) == {"webhook-id", "webhook-timestamp"}
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    with pytest.raises(signing.SignatureError):
        signing.verify(b"{}", headers, "whsec_x")


def test_generated_secret_is_32_random_bytes():
    secret = signing.generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[len("whsec_"):])) == 32
    assert secret != signing.generate_secret()


def test_verify_refuses_the_unstamped_signature_alone_unless_asked():
    """A delivery captured once, replayed with its webhook-* headers stripped: no timestamp to refuse it by."""
    secret = signing.generate_secret()
    body = b'{"event": "execution.completed"}'
    signed = signing.sign(body, "msg_1", [secret], timestamp=int(time.time()) - 3600)
    with pytest.raises(signing.SignatureError, match="tolerance"):
        signing.verify(body, signed, secret)
    replayed = {"X-AgentField-Signature": signed["X-AgentField-Signature"]}
    with pytest.raises(signing.SignatureError, match="no timestamp"):
        signing.verify(body, replayed, secret)
    signing.verify(body, replayed, secret, allow_unstamped=True)
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify(body + b" ", replayed, secret, allow_unstamped=True)


@pytest.mark.parametrize("garbage", ["v1,\u00e9", "v1,\ud800", "v1,AAAA\u0000"])
def test_a_signature_with_non_ascii_text_is_a_signature_error_not_a_type_error(garbage):
    """Receivers catch SignatureError: a TypeError from compare_digest answered 500 (and broke `manage.py listen`)."""
    secret = signing.generate_secret()
    stamped = {"webhook-id": "msg_1", "webhook-timestamp": str(int(time.time())), "webhook-signature": garbage}
    with pytest.raises(signing.SignatureError):
        signing.verify(b"{}", stamped, secret)
    with pytest.raises(signing.SignatureError):
        signing.verify(b"{}", {"X-AgentField-Signature": "sha256=" + garbage[3:]}, secret, allow_unstamped=True)
