from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "executions"
    verbose_name = "Agent nodes and executions"

    def ready(self) -> None:
        from agentfield_site.jobs import sweeper
        from agentfield_site.lib.metrics import register
        from agentfield_site.signals import key_revoked
        from observability import owners, stream_filters, streams

        from . import dispatch, lifecycle, nodes, ownership
        from .api import errors  # noqa: F401 - registers the API's answers to the domain errors
        from .metrics import ExecutionCollector
        from .models import STATUSES, AgentNode

        # Time-driven work: lost dispatches, waiting executions, stale executions, silent nodes.
        for tick in (dispatch.requeue_lapsed, dispatch.wake_waiting, dispatch.expire_stale, nodes.mark_silent_nodes_offline):
            if tick not in sweeper.ticks:
                sweeper.ticks.append(tick)
        key_revoked.connect(nodes.take_offline_nodes_of_revoked, dispatch_uid="executions.nodes.revoked")
        register("executions", ExecutionCollector())
        if ownership.execution_visible not in streams.execution_visible_to:
            streams.execution_visible_to.append(ownership.execution_visible)
        if ownership.execution_owners not in owners.execution_owners:
            owners.execution_owners.append(ownership.execution_owners)
        if ownership.executions_owned_by not in owners.executions_owned_by:
            owners.executions_owned_by.append(ownership.executions_owned_by)
        # Execution events carry the execution's status, node events the node's health.
        stream_filters.statuses.update({s: s for s in (*STATUSES, *AgentNode.Health.values)}, **lifecycle.ALIASES)
