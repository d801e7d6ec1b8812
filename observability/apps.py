from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ObservabilityConfig(AppConfig):
    name = "observability"
    verbose_name = "Event log and streams"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from agentfield_site.lib.metrics import register

        from . import events, forwarder, retention, sweeper, tail
        from .api import errors  # noqa: F401 - registers the API's answers to the forwarder's refusals
        from .metrics import ObservabilityCollector

        sweeper.ticks.append(retention.prune_if_due)
        # Streams in every server process re-read the log when it grows.
        events.after_commit.append(tail.send_wakeup)
        # The collector forwarder: woken after each commit, caught up by the sweeper.
        events.after_commit.append(forwarder.on_commit)
        sweeper.ticks.append(forwarder.tick)
        post_spawn.connect(_on_worker_start, dispatch_uid="observability.sweeper.kick")
        post_migrate.connect(_on_migrate, sender=self)
        register("observability", ObservabilityCollector())


def _on_worker_start(sender, proc_name: str, **kwargs) -> None:
    from . import sweeper

    sweeper.kick(after_restart=True)


def _on_migrate(sender, **kwargs) -> None:
    from . import sweeper

    sweeper.ensure_schedule()
