"""The per-destination in-flight cap holds across worker processes, not just within one."""

import threading
import time

import pytest

from tests.support.processes import wait_for
from tests.webhooks.test_breaker import make_rows
from webhooks.models import Delivery

# A worker woken again and again while deliveries remain, as kicks and the sweeper would.
SENDER = """
import time, django
django.setup()
from webhooks import delivery
from webhooks.models import Delivery
recorded, deadline = 0, time.monotonic() + 30
while time.monotonic() < deadline and Delivery.objects.exclude(status=Delivery.DELIVERED).exists():
    recorded += delivery.send_due(run_seconds=1)
    time.sleep(0.02)
print("recorded", recorded, flush=True)
"""
CAP = 4


class CountingReceiver:
    """A slow receiver that remembers the most requests it ever had open at once."""

    def __init__(self) -> None:
        from tests.webhooks.receiver import Receiver, Reply

        self.receiver = Receiver(default=Reply(200, delay=0.3))
        self.open = self.peak = 0
        self.lock = threading.Lock()
        handler = self.receiver.server.RequestHandlerClass
        original = handler.do_POST
        outer = self

        def counted(handler_self):
            with outer.lock:
                outer.open += 1
                outer.peak = max(outer.peak, outer.open)
            try:
                original(handler_self)
            finally:
                with outer.lock:
                    outer.open -= 1

        handler.do_POST = counted

    def __enter__(self) -> "CountingReceiver":
        self.receiver.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.receiver.__exit__(*exc)


@pytest.mark.processes
def test_cap_held_across_two_sender_processes(proc_env):
    env = {"WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION": str(CAP), "WEBHOOK_TIMEOUT": "5"}
    with CountingReceiver() as counting:
        make_rows(counting.receiver.url, 60, "cap")
        senders = [proc_env.script(f"sender{i}", ["-c", SENDER], extra_env=env) for i in range(2)]
        started = time.monotonic()
        wait_for(
            lambda: Delivery.objects.filter(status=Delivery.DELIVERED).count() == 60,
            timeout=60, what="every delivery",
        )
        elapsed = time.monotonic() - started
        for sender in senders:
            sender.popen.wait(timeout=60)
    assert counting.peak == CAP
    assert len(counting.receiver.requests) == 60
    # Both processes took part (each prints how many attempts it recorded).
    recorded = [int(s.log().split("recorded", 1)[1].split()[0]) for s in senders]
    assert sum(recorded) == 60 and min(recorded) > 0, recorded
    assert elapsed >= 60 / CAP * 0.3 * 0.9  # the cap, not luck, paced them
