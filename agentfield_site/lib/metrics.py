"""Prometheus metrics: one registry the apps fill in their `AppConfig.ready`.

Each app owns a collector that reads its tables at scrape time, so a scrape of
any daphne process counts the work of every process (workers included): the
database is the one place they all write. Only what lives in one process's
memory (open streams) is per process; scrape each daphne and `sum()` it.
"""

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

registry = CollectorRegistry(auto_describe=False)
_registered: set[str] = set()


def register(name: str, collector: Collector) -> None:
    """Add an app's collector once (ready() may run more than once in tests)."""
    if name not in _registered:
        _registered.add(name)
        registry.register(collector)


def render() -> bytes:
    """The text exposition format of every registered collector."""
    return generate_latest(registry)


def histogram(
    name: str, documentation: str, bounds: Iterable[float], cumulative: Iterable[int], total: float
) -> Metric:
    """A histogram family from cumulative counts per upper bound (the last is +Inf)."""
    counts = list(cumulative)
    labels = [*(floatToGoString(b) for b in bounds), "+Inf"]
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], buckets=list(zip(labels, counts, strict=True)), sum_value=total)
    return family
