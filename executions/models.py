"""Agent nodes and executions: the registry and the durable queue of work.

An Execution row is the dispatch queue: `dispatch_state` and the lease fields say
whether a worker owns the call to the agent, so a worker killed mid-call never
loses the execution (the sweeper hands it out again once the lease lapses).
Status changes go through `executions.lifecycle` only.
"""

import re
import uuid

from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from agentfield_site.models import ApiKey


class ExecutionStatus(models.TextChoices):
    """An execution's status, as CONTRACT.md names them; the terminal ones never change again."""

    PENDING = "pending", "pending"
    QUEUED = "queued", "queued"
    WAITING = "waiting", "waiting"
    RUNNING = "running", "running"
    PAUSED = "paused", "paused"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"
    TIMEOUT = "timeout", "timeout"


STATUSES = tuple(ExecutionStatus.values)
TERMINAL = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED, ExecutionStatus.TIMEOUT})
ACTIVE = tuple(s for s in STATUSES if s not in TERMINAL)
# Node, reasoner and skill ids: they become path segments of the agent's URL
# (`{base_url}/reasoners/{id}`), so nothing that could change the path or query.
COMPONENT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def new_execution_id() -> str:
    return f"exec_{uuid.uuid4().hex}"


def new_run_id() -> str:
    return f"run_{uuid.uuid4().hex}"


class AgentNode(models.Model):
    """An agent process that registered itself; reached at `base_url`."""

    class Health(models.TextChoices):
        ACTIVE = "active", "active"
        INACTIVE = "inactive", "inactive"

    id = models.CharField(max_length=128, primary_key=True, help_text="The node id agents register with.")
    base_url = models.CharField(max_length=500)
    version = models.CharField(max_length=64, blank=True)
    reasoners = models.JSONField(default=list, blank=True)
    skills = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    instance_id = models.CharField(max_length=128, blank=True)
    health_status = models.CharField(
        max_length=16, default=Health.ACTIVE, choices=Health.choices, db_index=True
    )
    lifecycle_status = models.CharField(max_length=32, blank=True)
    registered_at = models.DateTimeField(default=timezone.now)
    # The key that registered the node: only it (or an admin) may re-register,
    # heartbeat, shut down and report for it. Null: an admin without a key row
    # (API_KEYS, a staff session) or the open API.
    owner = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    last_heartbeat = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "agent node"

    def __str__(self) -> str:
        return self.id

    def reasoner_ids(self) -> list[str]:
        return _ids(self.reasoners)

    def skill_ids(self) -> list[str]:
        return _ids(self.skills)

    def kind_of(self, name: str) -> str | None:
        """'reasoner' or 'skill' when the node offers `name`, else None."""
        return offered_kind(self.reasoners, self.skills, name)


def _ids(components: object) -> list[str]:
    if not isinstance(components, list):
        return []
    return [str(c.get("id")) for c in components if isinstance(c, dict) and c.get("id")]


def offered_kind(reasoners: object, skills: object, name: str) -> str | None:
    """'reasoner' or 'skill' when a node with these `reasoners` and `skills` offers `name`, else None."""
    if name in _ids(reasoners):
        return "reasoner"
    if name in _ids(skills):
        return "skill"
    return None


class Execution(models.Model):
    """One call of `node.reasoner_or_skill`, from submission to a terminal status."""

    class Dispatch(models.TextChoices):
        # queued: waiting for a worker to call the agent; in_flight: a worker holds the
        # lease and is calling; accepted: the agent answered 202 and reports by callback;
        # done: the call's outcome is recorded.
        QUEUED = "queued"
        IN_FLIGHT = "in_flight"
        ACCEPTED = "accepted"
        DONE = "done"

    id = models.CharField(max_length=64, primary_key=True, default=new_execution_id, editable=False)
    run_id = models.CharField(max_length=128, db_index=True)
    workflow_id = models.CharField(max_length=128, db_index=True)
    parent_execution_id = models.CharField(max_length=128, blank=True)
    session_id = models.CharField(max_length=128, blank=True)
    actor_id = models.CharField(max_length=128, blank=True)

    target = models.CharField(max_length=300)
    type = models.CharField(max_length=16, choices=[("reasoner", "reasoner"), ("skill", "skill")])
    agent_node_id = models.CharField(max_length=128)
    reasoner_id = models.CharField(max_length=170)
    input = models.JSONField(default=dict, blank=True)
    context = models.JSONField(default=dict, blank=True)

    status = models.CharField(max_length=16, default=ExecutionStatus.QUEUED, choices=ExecutionStatus.choices)
    status_reason = models.CharField(max_length=500, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_category = models.CharField(max_length=32, blank=True)
    error_details = models.JSONField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.BigIntegerField(null=True, blank=True)

    idempotency_key = models.CharField(max_length=255, blank=True)
    # Whose it is: a client key sees and cancels its own only.
    owner = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # The key that sent it: the owner, or an agent key for a call made from one of its
    # executions (`ownership.call_owner`: the owner is then the workflow's client).
    # Idempotency-Keys are the sender's own.
    submitted_by = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    webhook_url = models.URLField(max_length=2048, blank=True)
    webhook_secret = models.TextField(blank=True)
    webhook_headers = models.JSONField(default=dict, blank=True)
    webhook_registered = models.BooleanField(default=False)
    webhook_error = models.CharField(max_length=500, blank=True)

    dispatch_state = models.CharField(max_length=16, choices=Dispatch.choices, default=Dispatch.QUEUED)
    dispatch_token = models.CharField(max_length=32, blank=True)
    dispatch_lease_until = models.DateTimeField(null=True, blank=True)
    dispatch_attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="exec_status_created"),
            models.Index(fields=["agent_node_id", "-created_at"], name="exec_node_created"),
            models.Index(fields=["workflow_id", "-created_at"], name="exec_workflow_created"),
            models.Index(fields=["target", "-created_at"], name="exec_target_created"),
            models.Index(fields=["-created_at", "-id"], name="exec_created"),
            # The sweeper's two queries: lapsed dispatch leases, and stale active rows.
            models.Index(fields=["dispatch_state", "dispatch_lease_until"], name="exec_dispatch_lease"),
            # A claim's look for the oldest waiting execution, in order, without sorting the queue.
            models.Index(fields=["dispatch_state", "created_at", "id"], name="exec_dispatch_queue"),
            # A submit's count of its key's executions waiting for dispatch (EXECUTION_QUEUE_LIMIT_PER_KEY):
            # by the key that sent them and the key they belong to (an agent's calls for each client apart).
            models.Index(fields=["submitted_by", "owner"], condition=models.Q(dispatch_state="queued"),
                         name="exec_waiting_sender"),
        ]
        constraints = [
            # One namespace of Idempotency-Keys per sending key (no key row: one shared namespace).
            models.UniqueConstraint(
                "idempotency_key", Coalesce("submitted_by", Value(0)),
                condition=~Q(idempotency_key=""), name="exec_idempotency_key_per_sender",
            ),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL
