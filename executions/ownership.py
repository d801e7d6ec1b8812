"""Who may see and touch which node and execution (the trust model in docs/security.md).

An admin sees everything. A client key sees the executions it submitted. An agent
key sees the nodes it registered and the executions dispatched to them; it may
also call other agents from an execution running on its nodes (the SDK's
`app.call`), and read those calls. Anything else is answered as if it did not
exist (404), so ids cannot be probed.
"""

from collections.abc import Collection

from django.db.models import Exists, OuterRef, Q, QuerySet

from agentfield_site.auth import ADMIN, AGENT, CLIENT, Caller, owned_by

from .errors import AgentCallRefused, InvalidInput, NodeTaken
from .models import TERMINAL, AgentNode, Execution


def nodes_of(caller: Caller) -> QuerySet[AgentNode]:
    return owned_by(caller, AgentNode.objects.all(), AGENT)


def executions_of(caller: Caller) -> QuerySet[Execution]:
    if caller.scope == ADMIN:
        return Execution.objects.all()
    if caller.key_id is None:
        return Execution.objects.none()
    if caller.scope == CLIENT:
        return Execution.objects.filter(owner_id=caller.key_id)
    if caller.scope == AGENT:
        return Execution.objects.filter(agent_node_id__in=nodes_of(caller).values("pk"))
    return Execution.objects.none()


def executions_readable_by(caller: Caller) -> QuerySet[Execution]:
    """What `caller` may read: `executions_of`, and for an agent key also the calls made from those."""
    if caller.scope != AGENT:
        return executions_of(caller)
    theirs = executions_of(caller)
    parent_is_theirs = Exists(theirs.filter(pk=OuterRef("parent_execution_id")))
    return Execution.objects.filter(Q(pk__in=theirs.values("pk")) | parent_is_theirs)


def call_owner(caller: Caller, parent_execution_id: str) -> int | None:
    """The owner of an execution an agent key submits, or `AgentCallRefused`.

    An agent key submits only calls made from an execution running on one of its
    nodes (`X-Parent-Execution-ID`, which the SDK's `app.call` sends). The call
    belongs to that execution's owner: the workflow stays one client's, who sees
    and is billed for all of it, and the agent acts for it only while it runs.
    """
    running = executions_of(caller).filter(pk=parent_execution_id).exclude(status__in=TERMINAL)
    found = running.values_list("owner_id").first() if parent_execution_id else None
    if found is None:
        raise AgentCallRefused(parent_execution_id)
    return found[0]


def submission_owner(caller: Caller, parent_execution_id: str) -> int | None:
    """The owner of an execution `caller` submits: an agent key's call belongs to its parent's owner.

    A client key names as parent (`X-Parent-Execution-ID`) only an execution of its
    own: the child of an execution is readable by the agent that runs the parent
    (`executions_readable_by`), and another client's execution as parent would hand
    this client's work to that agent to read and thread it into that workflow.
    """
    if caller.scope == AGENT:
        return call_owner(caller, parent_execution_id)
    if parent_execution_id and caller.scope == CLIENT and not execution_visible(caller, parent_execution_id):
        raise InvalidInput(
            f"X-Parent-Execution-ID {parent_execution_id[:128]!r} is not an execution of this API key.",
            field="X-Parent-Execution-ID",
        )
    return caller.key_id


def execution_visible(caller: Caller, execution_id: str) -> bool:
    return executions_of(caller).filter(pk=execution_id).exists()


def check_registration(caller: Caller, node: AgentNode | None) -> None:
    """Raise `NodeTaken` unless `caller` may (re-)register `node` (None: a new id).

    A node with no owner was registered by an admin without a key row or while the
    API was open; an agent key may claim it only once it is offline, so a live node
    is never redirected to someone else's base_url.
    """
    if node is None or caller.is_admin or node.owner_id == caller.key_id:
        return
    if node.owner_id is None and node.health_status == AgentNode.Health.INACTIVE:
        return
    raise NodeTaken(node.id)


def executions_owned_by(key_id: int) -> QuerySet:
    """The ids of the executions a key owns, as a subquery (a client's event stream)."""
    return Execution.objects.filter(owner_id=key_id).values("pk")


def execution_owners(execution_ids: Collection[str]) -> dict[str, int | None]:
    """The owning key of each execution (for subscriptions owned by client keys)."""
    return dict(Execution.objects.filter(pk__in=list(execution_ids)).values_list("pk", "owner_id"))
