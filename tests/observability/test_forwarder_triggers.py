"""What starts a forwarder run: a commit with new events, and the sweeper tick catching up."""

import time

import pytest
from django_q import tasks

from agentfield_site.jobs import leases, sweeper
from agentfield_site.models import Lease
from observability import events
from observability.forwarder import configuration, runner


@pytest.fixture
def enqueued(monkeypatch, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["collector.local"]
    calls: list[str] = []
    monkeypatch.setattr(tasks, "async_task", lambda func, *a, **kw: calls.append(func))
    return calls


def configure(enabled: bool = True) -> None:
    configuration.configure(
        url="http://collector.local/c", secret="", headers={}, enabled=enabled, event_types=["*"]
    )


@pytest.mark.django_db(transaction=True)
def test_the_sweeper_tick_starts_a_run_only_for_a_backlog(enqueued):
    assert runner.tick in sweeper.ticks
    events.publish("node.online")
    runner.tick()
    assert enqueued == [], "nothing configured"

    configure()
    Lease.objects.all().delete()
    runner.tick()
    assert enqueued == [], "configured after the event: no backlog"

    events.publish("node.online")
    Lease.objects.all().delete()
    enqueued.clear()
    runner.tick()
    assert enqueued == [runner.TASK]
    runner.tick()
    assert enqueued == [runner.TASK], "one kick per KICK_SECONDS"

    Lease.objects.all().delete()
    assert leases.acquire(runner.LEASE, "running", 30)
    runner.tick()
    assert enqueued == [runner.TASK], "a running forwarder already reads the log"


@pytest.mark.django_db(transaction=True)
def test_a_committed_event_wakes_the_forwarder(enqueued):
    assert runner.on_commit in events.after_commit
    configure()
    events.publish("execution.created")
    assert enqueued == [runner.TASK]

    configure(enabled=False)
    Lease.objects.all().delete()
    enqueued.clear()
    events.publish("execution.created")
    assert enqueued == [], "a disabled forwarder is not woken"


@pytest.mark.django_db(transaction=True)
def test_the_task_run_fits_inside_the_task_timeout(settings, enqueued):
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "timeout": 40}
    settings.OBSERVABILITY_TIMEOUT = 10
    settings.OBSERVABILITY_RETRY_SCHEDULE = [1, 5]
    settings.OBSERVABILITY_RUN_SECONDS = 50
    configure()
    # 40 s timeout - (3 x 10 s + 2.4 x 6 s) - 5 s leaves no room: the run takes 1 s at most.
    started = time.monotonic()
    runner.run()
    assert time.monotonic() - started < 6, "not the 50 s OBSERVABILITY_RUN_SECONDS"
