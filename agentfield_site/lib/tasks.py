"""Enqueue django-q2 tasks on a named cluster, with one broker per cluster per process.

`async_task` without a broker opens a new one (a new Redis pool) on every call;
wake-ups are frequent enough for that to matter.
"""

import threading

_brokers: dict[str, object] = {}
_lock = threading.Lock()


def _broker(cluster: str):
    from django_q.brokers import get_broker

    with _lock:
        if cluster not in _brokers:
            _brokers[cluster] = get_broker(cluster)
        return _brokers[cluster]


def enqueue(task: str, *args, cluster: str, name: str, timeout: float | None = None) -> None:
    """Queue `task(*args)` (a dotted path) for the workers of `cluster`."""
    from django_q.tasks import async_task

    options: dict = {"task_name": name, "broker": _broker(cluster), "cluster": cluster}
    if timeout is not None:
        options["timeout"] = timeout
    async_task(task, *args, q_options=options)


def in_database(cluster: str) -> bool:
    """Whether `cluster`'s broker is this database (django-q2's ORM broker): a task row then commits with its transaction."""
    from django_q.brokers.orm import ORM

    return isinstance(_broker(cluster), ORM)
