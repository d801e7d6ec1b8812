"""django-q2 entry points: one line each into the service the tests call directly."""

from . import dispatch


def dispatch_execution(execution_id: str | None) -> int:
    return dispatch.take(execution_id or None)


def send_cancel_notices(notices: list[tuple[str, str]]) -> None:
    dispatch.send_cancel_notices(notices)
