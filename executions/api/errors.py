"""How the API answers the execution services' refusals: the one place they become HTTP."""

from agentfield_site.lib.api import ApiError, translates

from .. import errors


@translates(errors.InvalidInput)
def _invalid(exc: errors.InvalidInput) -> ApiError:
    return ApiError(400, "bad_request", str(exc), error_category="bad_request")


@translates(errors.UnknownNode, errors.UnknownTarget, errors.UnknownExecution)
def _unknown(exc: errors.ExecutionError) -> ApiError:
    return ApiError(404, "not_found", str(exc), error_category="not_found")


@translates(errors.NodeTaken, errors.IdempotencyKeyReused, errors.TooManyNodes)
def _taken(exc: errors.ExecutionError) -> ApiError:
    return ApiError(409, "conflict", str(exc), error_category="bad_request")


@translates(errors.AgentCallRefused)
def _agent_call_refused(exc: errors.AgentCallRefused) -> ApiError:
    return ApiError(403, "forbidden", str(exc), error_category="bad_request")


@translates(errors.QueueFull)
def _queue_full(exc: errors.QueueFull) -> ApiError:
    return ApiError(503, "concurrency_limit", str(exc), error_category="concurrency_limit", headers={"Retry-After": "1"})


@translates(errors.InvalidTransition)
def _invalid_transition(exc: errors.InvalidTransition) -> ApiError:
    return ApiError(409, "invalid_transition", str(exc), error_category="bad_request", status=exc.current,
                    requested_status=exc.requested)


@translates(errors.NotCancellable)
def _not_cancellable(exc: errors.NotCancellable) -> ApiError:
    return ApiError(409, "invalid_state", str(exc), error_category="bad_request", status=exc.current)
