"""Execution metrics, read from the executions table at scrape time."""

from collections.abc import Iterator

from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import dispatch
from .models import ACTIVE, TERMINAL, Execution


class ExecutionCollector:
    def collect(self) -> Iterator[Metric]:
        by_status = dict(Execution.objects.values_list("status").annotate(n=Count("id")).order_by())
        # Finished executions only ever grow (a counter); the rest move on (a gauge).
        finished = CounterMetricFamily(
            "agentfield_executions", "Executions that finished, by final status.", labels=["status"]
        )
        for status in sorted(TERMINAL):
            finished.add_metric([status], by_status.get(status, 0))
        yield finished
        active = GaugeMetricFamily(
            "agentfield_executions_active", "Executions not finished yet, by status.", labels=["status"]
        )
        for status in ACTIVE:
            active.add_metric([status], by_status.get(status, 0))
        yield active
        nodes, _ = dispatch.calls_in_flight()
        calls = GaugeMetricFamily(
            "agentfield_agent_calls_in_flight",
            "Calls to agents going on now, by node (at most AGENT_MAX_CALLS_PER_NODE each).",
            labels=["node"],
        )
        for node, n in sorted(nodes.items()):
            calls.add_metric([node], n)
        yield calls
