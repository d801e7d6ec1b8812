from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "observability"
    verbose_name = "Event log and streams"

    def ready(self) -> None:
        from agentfield_site.jobs import sweeper
        from agentfield_site.lib.metrics import register

        from . import events, retention, tail
        from .api import errors  # noqa: F401 - registers the API's answers to the forwarder's refusals
        from .forwarder import runner
        from .metrics import ObservabilityCollector

        sweeper.ticks.append(retention.prune_if_due)
        # Streams in every server process re-read the log when it grows.
        events.after_commit.append(tail.send_wakeup)
        # The collector forwarder: woken after each commit, caught up by the sweeper.
        events.after_commit.append(runner.on_commit)
        sweeper.ticks.append(runner.tick)
        register("observability", ObservabilityCollector())
