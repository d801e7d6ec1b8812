from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "executions"
    verbose_name = "Agent nodes and executions"

    def ready(self) -> None:
        from agentfield_site.lib.metrics import register
        from observability import sweeper

        from . import dispatch, nodes
        from .metrics import ExecutionCollector

        # Time-driven work: lost dispatches, stale executions, silent nodes.
        for tick in (dispatch.requeue_lapsed, dispatch.expire_stale, nodes.mark_silent_nodes_offline):
            if tick not in sweeper.ticks:
                sweeper.ticks.append(tick)
        register("executions", ExecutionCollector())
