from django.db import models
from django.utils import timezone

SOURCES = ("execution", "node", "webhook", "stream", "system")


class PlatformEvent(models.Model):
    """One row per state change, written in the same transaction as the change.

    The integer id is the order of the platform: SSE `id:`, the forwarder's cursor,
    and what every consumer resumes from.
    """

    id = models.BigAutoField(primary_key=True)
    type = models.CharField(max_length=64, db_index=True)
    source = models.CharField(max_length=16)
    timestamp = models.DateTimeField(default=timezone.now, db_index=True)
    execution_id = models.CharField(max_length=64, blank=True, db_index=True)
    workflow_id = models.CharField(max_length=64, blank=True, db_index=True)
    agent_node_id = models.CharField(max_length=128, blank=True, db_index=True)
    status = models.CharField(max_length=32, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "platform event"

    def __str__(self) -> str:
        return f"#{self.id} {self.type}"

    def as_document(self) -> dict:
        """The contract's event document; optional keys only when set."""
        doc = {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
        }
        for key in ("execution_id", "workflow_id", "agent_node_id", "status"):
            value = getattr(self, key)
            if value:
                doc[key] = value
        doc["data"] = self.data
        return doc


class Lease(models.Model):
    """A named, expiring lock held by one process at a time (the sweeper, the forwarder)."""

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=64, blank=True)
    expires_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name
