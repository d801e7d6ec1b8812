"""django-q2 entry points: one line each into the delivery engine."""

from . import delivery


def send_due() -> int:
    """Send every due delivery (enqueued on commit and by the sweeper tick)."""
    return delivery.send_due()
