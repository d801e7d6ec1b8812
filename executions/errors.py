"""What the execution services refuse, as plain exceptions.

They know nothing of HTTP: `executions.api.errors` says once how the API answers
each, and the admin shows their message.
"""


class ExecutionError(Exception):
    """A refusal by the execution services; the message is a sentence for a person."""


class InvalidInput(ExecutionError):
    """A request that cannot be carried out as written (a 400); `field` names the culprit if one does."""

    def __init__(self, message: str, field: str = "") -> None:
        self.field = field
        super().__init__(message)


class InvalidTarget(InvalidInput):
    """A target that is not `node_id.reasoner_or_skill`."""

    def __init__(self, target: str) -> None:
        super().__init__(
            f"Target {target[:300]!r} must look like 'node_id.reasoner_or_skill', each id of 1 to 128 "
            "letters, digits, '_' or '-'."
        )


class UnknownNode(ExecutionError):
    """No such agent node (or another key's, which looks the same)."""

    def __init__(self, node_id: str, hint: str = "") -> None:
        self.node_id = node_id
        super().__init__(f"No agent node {node_id!r} is registered{hint}.")


class UnknownTarget(ExecutionError):
    """The node exists but offers no reasoner or skill of that name."""

    def __init__(self, node_id: str, name: str) -> None:
        super().__init__(f"Node {node_id!r} has no reasoner or skill {name!r}.")


class UnknownExecution(ExecutionError):
    """No such execution (or another key's, which looks the same)."""

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        super().__init__(f"No execution {execution_id!r}.")


class TooManyNodes(ExecutionError):
    """The key already holds AGENT_MAX_NODES_PER_KEY nodes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"This key already has {limit} nodes, the most one key may register "
                         "(AGENT_MAX_NODES_PER_KEY); an operator can delete the ones no longer used in the admin.")


class NodeTaken(ExecutionError):
    """The node id belongs to another key."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(
            f"Node id {node_id!r} is registered by another key; an admin key may re-register it, "
            "or pick another id."
        )


class IdempotencyKeyReused(ExecutionError):
    """This key's Idempotency-Key came back with another target or input inside the window."""

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was used for another target or input within the idempotency window; "
            "send the same request again, or a new key for a new one."
        )


class AgentCallRefused(ExecutionError):
    """An agent key submitted other than from an execution running on one of its nodes."""

    def __init__(self, parent_execution_id: str) -> None:
        where = (
            f"X-Parent-Execution-ID {parent_execution_id!r} is not an execution running on this key's nodes"
            if parent_execution_id else "it sent no X-Parent-Execution-ID"
        )
        super().__init__(
            "An agent key submits only calls made from an execution running on its nodes (as the SDK's "
            f"app.call does); {where}. Submit other work with a client key."
        )


class QueueFull(ExecutionError):
    """EXECUTION_QUEUE_LIMIT executions already wait for dispatch (or EXECUTION_QUEUE_LIMIT_PER_KEY of the key's)."""

    def __init__(self, limit: int, of_this_key: bool = False) -> None:
        whose = " of this API key's" if of_this_key else ""
        super().__init__(f"{limit} executions{whose} are already waiting for dispatch; try again later.")


class InvalidTransition(ExecutionError):
    """The requested status cannot follow the current one."""

    def __init__(self, current: str, requested: str) -> None:
        self.current = current
        self.requested = requested
        super().__init__(f"An execution that is {current} cannot become {requested}.")


class NotCancellable(ExecutionError):
    """The execution already ended."""

    def __init__(self, current: str) -> None:
        self.current = current
        super().__init__(f"The execution is already {current}.")
