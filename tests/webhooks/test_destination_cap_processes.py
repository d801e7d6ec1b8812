"""The per-destination in-flight cap holds across worker processes, not just within one."""

import time

import pytest

from devtools.loopback import LoopbackServer, Reply
from devtools.waiting import wait_for
from tests.webhooks.test_breaker import make_rows
from webhooks.models import Delivery

# A worker woken again and again while deliveries remain, as kicks and the sweeper would.
SENDER = """
import time, django
django.setup()
from webhooks import delivery
from webhooks.models import Delivery
recorded, deadline = 0, time.monotonic() + 30
while time.monotonic() < deadline and Delivery.objects.exclude(status=Delivery.Status.DELIVERED).exists():
    recorded += delivery.send_due(run_seconds=1)
    time.sleep(0.02)
print("recorded", recorded, flush=True)
"""
CAP = 4


@pytest.mark.processes
def test_cap_held_across_two_sender_processes(proc_env):
    env = {"WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION": str(CAP), "WEBHOOK_TIMEOUT": "5"}
    # A slow receiver: the cap, not its speed, decides how many requests are open at once.
    with LoopbackServer(default=Reply(200, delay=0.3)) as receiver:
        make_rows(receiver.url, 60, "cap")
        senders = [proc_env.script(f"sender{i}", ["-c", SENDER], extra_env=env) for i in range(2)]
        started = time.monotonic()
        wait_for(
            lambda: Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == 60,
            timeout=60, what="every delivery",
        )
        elapsed = time.monotonic() - started
        for sender in senders:
            sender.popen.wait(timeout=60)
    assert receiver.peak_in_flight == CAP
    assert len(receiver.requests) == 60
    # Both processes took part (each prints how many attempts it recorded).
    recorded = [int(s.log().split("recorded", 1)[1].split()[0]) for s in senders]
    assert sum(recorded) == 60 and min(recorded) > 0, recorded
    assert elapsed >= 60 / CAP * 0.3 * 0.9  # the cap, not luck, paced them
