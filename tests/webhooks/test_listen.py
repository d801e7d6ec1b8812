"""`manage.py listen` as a real process, receiving real deliveries from the engine."""

import re

import pytest

from agentfield_site.lib import signing
from devtools.processes import free_port
from devtools.waiting import wait_for
from tests.webhooks.conftest import drain, enqueue
from webhooks.models import Attempt, Delivery

pytestmark = pytest.mark.processes
SECRET = signing.generate_secret()


def _listen(proc_env, *args: str):
    port = free_port()
    proc = proc_env.script("listen", ["manage.py", "listen", "--port", str(port), *args], port)
    wait_for(lambda: "Listening on" in proc.log(), timeout=30, what=f"listen to start\n{proc.log()}")
    return proc


def _url(proc) -> str:
    return f"{proc.url}/hook"


def test_prints_a_verified_delivery_and_answers_200(proc_env):
    listener = _listen(proc_env, "--secret", SECRET)
    row = drain(enqueue(_url(listener), SECRET))
    assert row.status == Delivery.Status.DELIVERED and row.last_status == 200
    out = wait_for(lambda: "<- 200" in listener.log() and listener.log(), timeout=10, what="the printed reply")
    assert "-> POST /hook" in out
    assert f"webhook-id: {row.webhook_id}" in out
    assert re.search(r"webhook-signature: v1,\S+", out)
    assert "X-AgentField-Signature: sha256=" in out
    assert "signature: verified" in out
    # The body, pretty-printed (indented JSON, unicode as is).
    assert '\n  "execution_id": "exec_1",\n' in out
    assert '"text": "naïve café ✓"' in out


def test_a_wrong_secret_is_reported_but_still_answered(proc_env):
    listener = _listen(proc_env, "--secret", signing.generate_secret())
    row = drain(enqueue(_url(listener), SECRET))
    assert row.status == Delivery.Status.DELIVERED
    out = wait_for(lambda: "<- 200" in listener.log() and listener.log(), timeout=10, what="the printed reply")
    assert "signature: INVALID (no matching webhook-signature)" in out


def test_unsigned_and_unchecked(proc_env):
    listener = _listen(proc_env)
    drain(enqueue(_url(listener), SECRET))
    out = wait_for(lambda: "<- 200" in listener.log() and listener.log(), timeout=10, what="the printed reply")
    assert "signature: not checked (pass --secret whsec_... to verify)" in out


def test_fail_410_dead_letters_at_once(proc_env):
    listener = _listen(proc_env, "--secret", SECRET, "--fail", "410")
    row = drain(enqueue(_url(listener), SECRET))
    assert row.status == Delivery.Status.DEAD and row.attempts == 1 and row.last_status == 410
    wait_for(lambda: "<- 410" in listener.log(), timeout=10, what="the printed reply")


def test_fail_500_is_retried(proc_env):
    listener = _listen(proc_env, "--fail", "500")
    row = drain(enqueue(_url(listener), SECRET))
    assert row.status == Delivery.Status.DEAD and row.last_status == 500
    assert row.attempts > 1
    assert wait_for(lambda: listener.log().count("<- 500") == row.attempts or None, timeout=10)


def test_fail_timeout_never_answers(proc_env, settings):
    settings.WEBHOOK_TIMEOUT = 0.5
    listener = _listen(proc_env, "--fail", "timeout")
    row = enqueue(_url(listener), SECRET)
    from webhooks import delivery

    delivery.send_due()
    attempt = Attempt.objects.filter(delivery=row).first()
    assert attempt is not None and attempt.status_code is None
    assert "timeout" in attempt.error
    assert wait_for(lambda: "<- no answer (timeout)" in listener.log(), timeout=10)


def test_a_bad_fail_mode_is_refused(proc_env):
    proc = proc_env.script("listen", ["manage.py", "listen", "--fail", "200"])
    assert proc.popen.wait(timeout=30) != 0
    assert "--fail takes timeout or a status from 400 to 599" in proc.log()


def test_ctrl_c_says_it_stopped_and_a_signature_in_other_characters_is_reported_not_dropped(proc_env):
    """A signature header with a byte outside ASCII made the check raise TypeError: a traceback and a dropped connection."""
    import http.client
    import signal

    listener = _listen(proc_env, "--secret", SECRET)
    connection = http.client.HTTPConnection("127.0.0.1", listener.port, timeout=10)
    connection.putrequest("POST", "/hook")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", "2")
    connection.putheader("webhook-id", "msg_1")
    connection.putheader("webhook-timestamp", "1700000000")
    connection.putheader("webhook-signature", b"v1,\xe9")
    connection.endheaders(b"{}")
    answer = connection.getresponse()
    assert answer.status == 200, "answered, as every delivery is"
    assert "Traceback" not in listener.log()
    listener.popen.send_signal(signal.SIGINT)
    assert listener.popen.wait(timeout=10) == 0
    assert listener.log().rstrip().endswith("Stopped."), listener.log()[-500:]
