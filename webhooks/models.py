"""Outbound deliveries: the row is the queue, the attempts are the log.

`Delivery` moves `pending -> in_flight (leased) -> delivered | pending (retry at
next_attempt_at) | dead`, plus `failed` for one-shot sends (a subscription's test)
that do not retry. Its body is the exact bytes sent, so every attempt and every
redrive signs and sends the same bytes under the same `webhook_id`.
"""

import secrets
import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from agentfield_site.models import ApiKey


def new_webhook_id() -> str:
    """A stable delivery id for the `webhook-id` header (receivers de-duplicate on it)."""
    return "whd_" + uuid.uuid4().hex


def new_subscription_id() -> str:
    return "sub_" + secrets.token_hex(8)


class Subscription(models.Model):
    """A standing endpoint that receives every platform event matching `event_types`."""

    # Why a revoked key's subscriptions hear nothing (`subscriptions.disable_subscriptions_of_revoked`).
    OWNER_REVOKED = "The API key that created it was revoked."

    id = models.CharField(max_length=32, primary_key=True, default=new_subscription_id, editable=False)
    # Checked by `outbound.clean_url`, the one URL rule (the API's and the admin form's):
    # Django's URLValidator refuses what the sender takes (`hooks_svc.example.com`,
    # `localhost.`), so the admin could not save a subscription the API had made.
    url = models.CharField(max_length=2048)
    description = models.CharField(max_length=500, blank=True)
    # Type patterns with `*` wildcards, e.g. "execution.completed", "node.*", "*".
    event_types = models.JSONField(default=list)
    # Write-only: the API shows the names with masked values (they often carry tokens).
    headers = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    # The key that created it. A client key's subscription sees and hears about only
    # that key's executions; null (an admin without a key row) hears everything.
    owner = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    disabled_reason = models.CharField(max_length=500, blank=True)
    # Start of the current run of failed attempts; cleared by any success.
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.id} → {self.url}"


class SubscriptionSecret(models.Model):
    """One signing secret; rotation gives the old one an expiry instead of deleting it."""

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="secrets")
    secret = models.CharField(max_length=4096)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"secret of {self.subscription_id} (expires {self.expires_at or 'never'})"


class Delivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        IN_FLIGHT = "in_flight", "in_flight"
        DELIVERED = "delivered", "delivered"
        FAILED = "failed", "failed"
        DEAD = "dead", "dead"

    class Kind(models.TextChoices):
        COMPLETION = "completion", "completion"
        SUBSCRIPTION = "subscription", "subscription"
        TEST = "test", "test"

    id = models.BigAutoField(primary_key=True)
    # Unique by a constraint below, not `unique=True` (see Meta).
    webhook_id = models.CharField(max_length=64, default=new_webhook_id, editable=False)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    event_type = models.CharField(max_length=64)
    execution_id = models.CharField(max_length=64, blank=True)
    subscription = models.ForeignKey(
        Subscription,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="deliveries",
        # No database constraint: events create deliveries from a cached list of
        # subscriptions, and a subscription deleted meanwhile by another process
        # must not make the event's own transaction fail. The engine drops orphans.
        db_constraint=False,
        db_index=False,  # indexed in Meta
    )
    event_id = models.BigIntegerField(null=True, blank=True)
    url = models.URLField(max_length=2048)
    # scheme://host:port of `url`: what circuit breakers and in-flight caps count.
    destination = models.CharField(max_length=255, blank=True)
    headers = models.JSONField(default=dict, blank=True)
    # Completion webhooks carry their own secret; subscriptions sign with theirs.
    secret = models.TextField(blank=True)
    body = models.BinaryField()
    retries = models.BooleanField(default=True)
    # Copied from the execution or subscription it serves: a client key's dead letters are its own.
    # No index of its own: the DLQ filters dead rows (a partial index) by it.
    owner = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False,
        db_index=False,
    )

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_token = models.CharField(max_length=32, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # Attempts made before the last redrive: the retry budget counts from here.
    budget_base = models.PositiveIntegerField(default=0)
    # When the current budget began (creation or redrive): a delivery deferred by an
    # open circuit breaker is dead-lettered once its schedule's span has passed.
    budget_started_at = models.DateTimeField(default=timezone.now)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    dead_lettered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        indexes = [
            # Partial indexes: a row is in each only while it is in that state, so the
            # claim's indexes stay as small as the queue, and a delivered row (most of
            # the table) costs no write to any of them.
            # The claim's order, id included: rows due at the same moment (a redrive,
            # a burst) are read in order, not all of them sorted to return the first few.
            models.Index(fields=["next_attempt_at", "id"], condition=Q(status="pending"), name="webhooks_due_in_order"),
            models.Index(fields=["lease_until"], condition=Q(status="in_flight"), name="webhooks_leased"),
            models.Index(
                fields=["destination", "status"], condition=Q(status__in=["pending", "in_flight"]),
                name="webhooks_queued_by_destination",
            ),
            models.Index(fields=["dead_lettered_at"], condition=Q(status="dead"), name="webhooks_dead"),
            # Plain indexes declared here rather than with `unique=True`/`db_index=True`,
            # which on PostgreSQL add a `varchar_pattern_ops` twin per column for LIKE
            # queries that nothing makes. A row is updated twice on its way (leased,
            # then delivered), and each update writes every index.
            models.Index(fields=["execution_id"], name="webhooks_by_execution"),
            models.Index(fields=["subscription"], name="webhooks_by_subscription"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["webhook_id"], name="webhooks_one_webhook_id"),
            # Exactly one completion webhook per execution, however often it ends.
            models.UniqueConstraint(
                fields=["execution_id"], condition=Q(kind="completion"), name="webhooks_one_completion"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.webhook_id} {self.event_type} → {self.destination} ({self.status})"


class DestinationQuerySet(models.QuerySet):
    def update(self, **fields) -> int:
        # An update bypasses `auto_now`, and every change to a breaker is one.
        fields.setdefault("updated_at", timezone.now())
        return super().update(**fields)


class Destination(models.Model):
    """A receiver address (scheme://host:port) and its circuit breaker, shared by every worker.

    `closed`: deliveries flow. `open`: after WEBHOOK_BREAKER_FAILURES consecutive
    failed attempts its deliveries wait, spending no attempt, until `next_probe_at`.
    `half_open`: one probe is in flight (until `probe_until`); its success closes
    the breaker, its failure reopens it for twice the cooldown. A 429 with
    Retry-After pauses a destination until `paused_until` whatever its state.
    """

    class State(models.TextChoices):
        CLOSED = "closed", "closed"
        OPEN = "open", "open"
        HALF_OPEN = "half_open", "half_open"

    destination = models.CharField(max_length=255, primary_key=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.CLOSED, db_index=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    # When it last failed while troubled: it opened, or a probe failed. A delivery that
    # waited past its schedule's span goes to the dead letter queue only after a
    # failure later than that span's end: the destination had its chance to take it.
    failed_at = models.DateTimeField(null=True, blank=True)
    cooldown_seconds = models.FloatField(default=0)
    next_probe_at = models.DateTimeField(null=True, blank=True)
    probe_until = models.DateTimeField(null=True, blank=True)
    paused_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DestinationQuerySet.as_manager()

    class Meta:
        ordering = ["destination"]

    def __str__(self) -> str:
        return f"{self.destination} ({self.state})"


class Attempt(models.Model):
    """One HTTP attempt of a delivery, as the receiver answered it."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered", "delivered"
        RETRY = "retry", "retry"
        DEAD = "dead", "dead"
        FAILED = "failed", "failed"

    id = models.BigAutoField(primary_key=True)
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.TextField(blank=True)
    error = models.TextField(blank=True)
    # What the engine made of it.
    outcome = models.CharField(max_length=16, choices=Outcome.choices)

    class Meta:
        ordering = ["delivery_id", "number"]

    def __str__(self) -> str:
        return f"attempt {self.number}"


class DeadLetter(Delivery):
    """The dead letter queue as its own admin page (deliveries with status `dead`)."""

    class Meta:
        proxy = True
        verbose_name = "dead letter"
        verbose_name_plural = "dead letter queue"
