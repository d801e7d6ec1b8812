"""`manage.py worker`: the django-q2 clusters, so that dispatch and delivery never share slots.

`dispatch` serves agent calls (each may hold its worker for AGENT_CALL_TIMEOUT);
`deliveries` serves webhook sending, the collector forwarder and the sweeper
(long loops). With no argument both run, as children of this process; SIGTERM
or SIGINT stops both gracefully, and if one exits the other is stopped and this
command exits non-zero. Production may instead run each cluster on its own
(`manage.py worker dispatch`, `manage.py worker deliveries`), on any number of
machines.
"""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

CLUSTERS = ("dispatch", "deliveries")


def cluster_env(role: str) -> dict[str, str]:
    """The environment that makes `qcluster` serve `role`'s queue."""
    env = dict(os.environ)
    env.pop("Q_CLUSTER_NAME", None)
    # django-q2 forks its workers, and a psycopg pool's threads do not survive a fork.
    env["CONN_POOL"] = "false"
    if role == "deliveries":
        env["Q_CLUSTER_NAME"] = settings.DELIVERY_CLUSTER
    return env


class Command(BaseCommand):
    help = "Run the django-q2 worker clusters: dispatch (agent calls) and deliveries (webhooks, forwarder, sweeper)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("clusters", nargs="*", metavar="{dispatch,deliveries}", help="Default: both.")

    def handle(self, *args, clusters: list[str], **options) -> None:
        unknown = set(clusters) - set(CLUSTERS)
        if unknown:
            raise CommandError(f"unknown cluster {sorted(unknown)[0]!r}: choose from {', '.join(CLUSTERS)}")
        roles = list(dict.fromkeys(clusters)) or list(CLUSTERS)
        command = [sys.executable, "-m", "django", "qcluster"]
        if len(roles) == 1:
            os.execve(sys.executable, command, cluster_env(roles[0]))
        children = {
            role: subprocess.Popen(command, env=cluster_env(role), cwd=settings.BASE_DIR) for role in roles
        }
        stopping = False

        def stop(*_) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        failed = None
        while not stopping:
            for role, child in children.items():
                if child.poll() is not None:
                    failed = f"the {role} cluster exited with {child.returncode}"
                    stopping = True
            time.sleep(0.2)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            child.wait()
        if failed:
            raise CommandError(f"{failed}; stopped the rest.")
