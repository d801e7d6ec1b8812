import pytest
from django.utils import timezone

from agentfield_site.jobs import leases, sweeper
from agentfield_site.models import Lease


@pytest.mark.django_db(transaction=True)
def test_lease_has_one_holder_until_it_lapses(settings):
    assert leases.acquire("job", "a", 30)
    assert leases.acquire("job", "a", 30), "the holder renews"
    assert not leases.acquire("job", "b", 30)
    Lease.objects.filter(name="job").update(expires_at=timezone.now() - timezone.timedelta(seconds=1))
    assert leases.acquire("job", "b", 30), "a lapsed lease is taken over"
    leases.release("job", "b")
    assert not leases.is_held("job")


@pytest.mark.django_db(transaction=True)
def test_sweeper_runs_every_tick_and_survives_a_failing_one(settings, monkeypatch):
    settings.SWEEP_TICK_SECONDS = 0.01
    calls = []

    def broken():
        raise ValueError("boom")

    monkeypatch.setattr(sweeper, "ticks", [broken, lambda: calls.append(1)])
    monkeypatch.setattr(sweeper, "_enqueue", lambda: calls.append("successor"))
    ran = sweeper.run(seconds=0.2)
    assert ran >= 3
    assert calls.count(1) == ran
    assert calls[-1] == "successor", "the holder hands over to one successor"
    assert not leases.is_held(sweeper.LEASE)


@pytest.mark.django_db(transaction=True)
def test_second_sweeper_leaves_a_live_holder_alone(settings, monkeypatch):
    settings.SWEEP_TICK_SECONDS = 0.01
    settings.SWEEP_LEASE_SECONDS = 0.1
    monkeypatch.setattr(sweeper, "ticks", [])
    monkeypatch.setattr(sweeper, "_enqueue", lambda: None)
    # A live holder keeps renewing for longer than the waiter's patience.
    assert leases.acquire(sweeper.LEASE, "other", 60)
    assert sweeper.run(seconds=5) == 0


@pytest.mark.django_db(transaction=True)
def test_kicks_close_together_enqueue_once(settings, monkeypatch):
    enqueued = []
    monkeypatch.setattr(sweeper, "_enqueue", lambda: enqueued.append(1))
    sweeper.kick()
    sweeper.kick()
    assert enqueued == [1]
    assert leases.acquire(sweeper.LEASE, "live", 60)
    Lease.objects.filter(name=sweeper.KICK_LEASE).delete()
    sweeper.kick()
    assert enqueued == [1], "no kick while a sweeper holds the lease"
    sweeper.kick(after_restart=True)
    assert enqueued == [1, 1], "a restarted worker kicks even while a (maybe dead) holder has the lease"


@pytest.mark.django_db(transaction=True)
def test_a_sweeper_that_finds_a_live_one_ends_without_a_successor(settings, monkeypatch):
    """A task queued before a restart, or kicked by a starting worker, while a sweeper runs.

    Its own run is shorter than a lease's patience: it used to reach its end still
    waiting and queue a successor anyway, one more chain of sweepers per restart
    until they held every delivery worker.
    """
    settings.SWEEP_TICK_SECONDS = 0.01
    settings.SWEEP_LEASE_SECONDS = 0.5
    successors = []
    monkeypatch.setattr(sweeper, "ticks", [])
    monkeypatch.setattr(sweeper, "_enqueue", lambda: successors.append(1))
    assert leases.acquire(sweeper.LEASE, "live", settings.SWEEP_LEASE_SECONDS)
    sleep = sweeper.time.sleep

    def live_sweeper_ticks(seconds: float) -> None:  # the live holder renews between the waiter's looks
        leases.acquire(sweeper.LEASE, "live", settings.SWEEP_LEASE_SECONDS)
        sleep(seconds)

    monkeypatch.setattr(sweeper.time, "sleep", live_sweeper_ticks)
    assert sweeper.run(seconds=0.05) == 0
    assert successors == [] and leases.state(sweeper.LEASE)[0] == "live"


@pytest.mark.django_db(transaction=True)
def test_a_sweeper_waits_out_a_dead_ones_lease_then_runs_its_full_turn(settings, monkeypatch):
    settings.SWEEP_TICK_SECONDS = 0.01
    settings.SWEEP_LEASE_SECONDS = 0.3
    successors = []
    monkeypatch.setattr(sweeper, "ticks", [])
    monkeypatch.setattr(sweeper, "_enqueue", lambda: successors.append(1))
    assert leases.acquire(sweeper.LEASE, "killed", settings.SWEEP_LEASE_SECONDS)  # and never renewed
    # A run shorter than the lease it waits out still ticks once it holds the lease.
    assert sweeper.run(seconds=0.1) >= 3
    assert successors == [1]


def test_a_sweeper_task_must_fit_its_wait_and_its_turn_in_the_task_timeout(settings):
    from django.core import checks

    from agentfield_site.apps import check_settings

    errors = lambda: [m.id for m in check_settings(None) if m.level >= checks.ERROR]  # noqa: E731
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "timeout": 300}
    settings.SWEEP_RUN_SECONDS, settings.SWEEP_LEASE_SECONDS = 10, 10
    assert "agentfield.E004" not in errors()
    # Each below the timeout alone, but a task waiting out a killed sweeper's lease would be cut short.
    settings.SWEEP_RUN_SECONDS, settings.SWEEP_LEASE_SECONDS = 250, 40
    assert "agentfield.E004" in errors()
