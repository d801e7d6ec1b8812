"""Forwarder and stream metrics."""

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from . import tail
from .forwarder import configuration


class ObservabilityCollector:
    def collect(self) -> Iterator[Metric]:
        status = configuration.status()
        yield GaugeMetricFamily(
            "agentfield_forwarder_backlog", "Events not yet forwarded to the collector.", value=status["backlog"]
        )
        yield GaugeMetricFamily(
            "agentfield_forwarder_dead_letters",
            "Events the forwarder gave up on.",
            value=status["dead_letter_count"],
        )
        yield GaugeMetricFamily(
            "agentfield_stream_connections",
            "SSE and WebSocket streams open on this server process (sum over processes).",
            value=tail.open_streams(),
        )
