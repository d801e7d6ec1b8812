"""A worker killed mid-delivery: after a restart the delivery completes, under the same webhook-id."""

import pytest
from django.db import transaction

from agentfield_site.jobs import leases, sweeper
from devtools.loopback import LoopbackServer, Reply
from devtools.waiting import wait_for
from tests.webhooks.conftest import completion_payload
from webhooks.completion import enqueue_completion
from webhooks.models import Delivery


@pytest.mark.processes
def test_sigkilled_worker_mid_delivery_then_restart(proc_env):
    secret = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    # The first request hangs (the worker is killed while waiting), the next succeed.
    with LoopbackServer(Reply(200, delay=20)) as receiver:
        worker = proc_env.worker()
        with transaction.atomic():
            enqueue_completion(
                execution_id="exec_crash", url=receiver.url, secret=secret, headers={},
                payload=completion_payload("exec_crash"),
            )
        wait_for(lambda: receiver.requests, timeout=30, what=f"first request\n{worker.log()}")
        assert Delivery.objects.get(execution_id="exec_crash").status == Delivery.Status.IN_FLIGHT
        worker.kill()
        # Let the dead worker's sweeper lease lapse so the new worker's start-up kick runs one.
        wait_for(lambda: not leases.is_held(sweeper.LEASE), timeout=10, what="sweeper lease to lapse")
        worker = proc_env.worker()
        row = wait_for(
            lambda: Delivery.objects.filter(execution_id="exec_crash", status=Delivery.Status.DELIVERED).first(),
            timeout=40,
            what=f"delivery after restart\n{worker.log()}",
        )
    assert len(receiver.requests) >= 2
    assert {r.headers["webhook-id"] for r in receiver.requests} == {row.webhook_id}
    assert row.attempts == 1 and row.attempt_log.get().status_code == 200


@pytest.mark.processes
def test_a_stopped_worker_hands_back_a_slow_send_at_once_and_spends_no_attempt(proc_env):
    """SIGTERM while a receiver takes its time: the worker ends in seconds, not after the
    request's timeout or the sender's run, and the delivery waits, unsent, for the next worker."""
    import time

    with LoopbackServer(Reply(200, delay=20)) as receiver:
        worker = proc_env.worker({"WEBHOOK_TIMEOUT": "25", "WEBHOOK_LEASE_SECONDS": "40"})
        with transaction.atomic():
            enqueue_completion(
                execution_id="exec_stop", url=receiver.url, secret="s", headers={},
                payload=completion_payload("exec_stop"),
            )
        wait_for(lambda: receiver.requests, timeout=30, what=f"the request\n{worker.log()}")
        started = time.monotonic()
        worker.stop(grace=40)
        took = time.monotonic() - started
    assert worker.popen.returncode == 0, worker.log()[-2000:]
    assert took < 8, f"the stop took {took:.1f} s\n{worker.log()[-2000:]}"
    row = Delivery.objects.get(execution_id="exec_stop")
    assert (row.status, row.attempts, row.lease_token) == (Delivery.Status.PENDING, 0, ""), "handed back, no attempt"
