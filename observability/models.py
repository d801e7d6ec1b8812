from django.db import models
from django.utils import timezone

from agentfield_site.lib.timefmt import iso

SOURCES = ("execution", "node", "webhook", "stream", "system")


class PlatformEvent(models.Model):
    """One row per state change, written in the same transaction as the change.

    The integer id is the order of the platform: SSE `id:`, the forwarder's cursor,
    and what every consumer resumes from.
    """

    id = models.BigAutoField(primary_key=True)
    type = models.CharField(max_length=64)
    source = models.CharField(max_length=16)
    timestamp = models.DateTimeField(default=timezone.now, db_index=True)
    execution_id = models.CharField(max_length=64, blank=True)
    # As long as the execution's (an X-Run-ID names it: up to 128 characters).
    workflow_id = models.CharField(max_length=128, blank=True)
    agent_node_id = models.CharField(max_length=128, blank=True)
    status = models.CharField(max_length=32, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "platform event"
        # Equality lookups only. Declared here rather than with `db_index=True`, which
        # on PostgreSQL adds a second, `varchar_pattern_ops` index per column for
        # LIKE queries that nothing makes: every event (one per delivery, among
        # others) would pay four index writes for nothing.
        indexes = [
            models.Index(fields=[name], name=f"events_by_{name}")
            for name in ("type", "execution_id", "workflow_id", "agent_node_id")
        ]

    def __str__(self) -> str:
        return f"#{self.id} {self.type}"

    def as_document(self) -> dict:
        """The contract's event document; optional keys only when set."""
        doc = {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "timestamp": iso(self.timestamp),
        }
        for key in ("execution_id", "workflow_id", "agent_node_id", "status"):
            value = getattr(self, key)
            if value:
                doc[key] = value
        doc["data"] = self.data
        return doc


class ForwarderConfig(models.Model):
    """The one collector the forwarder sends every platform event to (a singleton, pk=1)."""

    SINGLETON_ID = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON_ID, editable=False)
    url = models.URLField(max_length=2048)
    # As long as `outbound.clean_secret` allows any signing secret to be.
    secret = models.CharField(max_length=4096, blank=True)
    headers = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    # Type patterns with `*` wildcards; empty means every event.
    event_types = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "observability webhook"

    def __str__(self) -> str:
        return self.url

    @classmethod
    def current(cls) -> "ForwarderConfig | None":
        return cls.objects.filter(pk=cls.SINGLETON_ID).first()


class ForwarderState(models.Model):
    """The forwarder's durable cursor and counters (a singleton, pk=1).

    Kept apart from the configuration so that saving the configuration (the
    admin writes every field) can never move the cursor back.
    """

    SINGLETON_ID = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON_ID, editable=False)
    # Id of the last event acknowledged by the collector, dead-lettered or filtered out.
    cursor = models.BigIntegerField(default=0)
    events_forwarded = models.BigIntegerField(default=0)
    last_forwarded_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "observability forwarder state"

    def __str__(self) -> str:
        return f"cursor {self.cursor}"

    @classmethod
    def get(cls) -> "ForwarderState":
        state, _ = cls.objects.get_or_create(pk=cls.SINGLETON_ID)
        return state


class ForwarderDeadLetter(models.Model):
    """One event the collector did not take after every attempt; redrive sends it again.

    A copy of the event as sent, so retention pruning the log cannot lose it.
    """

    id = models.BigAutoField(primary_key=True)
    event_id = models.BigIntegerField(db_index=True)
    event_type = models.CharField(max_length=64)
    event_source = models.CharField(max_length=16)
    event_timestamp = models.DateTimeField()
    payload = models.JSONField(default=dict)
    error_message = models.TextField(blank=True)
    # Delivery attempts made for this event so far, redrives included.
    retry_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "observability dead letter"

    def __str__(self) -> str:
        return f"event #{self.event_id} {self.event_type}"

    def as_entry(self) -> dict:
        """The contract's DLQ entry."""
        return {
            "id": self.id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "event_source": self.event_source,
            "event_timestamp": iso(self.event_timestamp),
            "payload": self.payload,
            "error_message": self.error_message,
            "retry_count": self.retry_count,
            "created_at": iso(self.created_at),
        }

