"""Webhook metrics, read from the delivery and attempt tables at scrape time."""

from collections.abc import Iterator

from django.db.models import Count, F, Q, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agentfield_site.lib.metrics import histogram

from .models import Attempt, Delivery, Destination

# Upper bounds in seconds, for receivers from loopback to a slow remote answering at the timeout.
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Series of `agentfield_destination_breaker_open` a scrape returns at most.
BREAKER_SERIES_MAX = 50


class WebhookCollector:
    def collect(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "agentfield_webhook_deliveries",
            "Delivery attempts by outcome (delivered, retry, dead, failed).",
            labels=["outcome"],
        )
        for row in Attempt.objects.values("outcome").annotate(n=Count("id")).order_by("outcome"):
            outcomes.add_metric([row["outcome"]], row["n"])
        yield outcomes

        # One pass over the attempts: a count under each bound, the total duration.
        buckets = {f"le{i}": Count("id", filter=Q(duration_ms__lte=b * 1000)) for i, b in enumerate(DURATION_BOUNDS)}
        agg = Attempt.objects.aggregate(total=Count("id"), ms=Sum("duration_ms"), **buckets)
        yield histogram(
            "agentfield_webhook_attempt_duration_seconds",
            "Duration of each delivery attempt, from connect to the response (or the error).",
            DURATION_BOUNDS,
            [*(agg[f"le{i}"] for i in range(len(DURATION_BOUNDS))), agg["total"]],
            (agg["ms"] or 0) / 1000,
        )

        states = dict(
            Delivery.objects.filter(status__in=(Delivery.Status.PENDING, Delivery.Status.IN_FLIGHT, Delivery.Status.DEAD))
            .values_list("status")
            .annotate(n=Count("id"))
        )
        yield GaugeMetricFamily(
            "agentfield_webhook_pending",
            "Deliveries waiting for their next attempt or in flight.",
            value=states.get(Delivery.Status.PENDING, 0) + states.get(Delivery.Status.IN_FLIGHT, 0),
        )
        yield GaugeMetricFamily(
            "agentfield_webhook_dead_letters", "Deliveries in the dead letter queue.", value=states.get(Delivery.Status.DEAD, 0)
        )

        by_state = dict(Destination.objects.values_list("state").annotate(n=Count("destination")).order_by())
        states_family = GaugeMetricFamily(
            "agentfield_destinations", "Receiver addresses by circuit breaker state.", labels=["state"]
        )
        for state, _ in Destination.State.choices:
            states_family.add_metric([state], by_state.get(state, 0))
        yield states_family
        # One series per destination whose breaker is not closed, the longest open first, at most
        # BREAKER_SERIES_MAX: any key may name receivers that fail, and every series a scrape
        # returns is kept by Prometheus. `agentfield_destinations` counts them all.
        breaker = GaugeMetricFamily(
            "agentfield_destination_breaker_open",
            "1 while a destination's breaker is open or half-open (its deliveries wait).",
            labels=["destination"],
        )
        troubled = (
            Destination.objects.exclude(state=Destination.State.CLOSED)
            .order_by(F("opened_at").asc(nulls_last=True), "destination")
            .values_list("destination", flat=True)[:BREAKER_SERIES_MAX]
        )
        for destination in troubled:
            breaker.add_metric([destination], 1)
        yield breaker

