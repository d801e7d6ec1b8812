"""`manage.py worker`: the django-q2 clusters, so that dispatch and delivery never share slots.

`dispatch` serves agent calls (each may hold its worker for AGENT_CALL_TIMEOUT);
`deliveries` serves webhook sending, the collector forwarder and the sweeper
(long loops). The clusters named (both by default) run as children of this
process; SIGTERM or SIGINT stops them gracefully, and if one exits the others are
stopped and this command exits non-zero. Production may instead run each cluster
on its own (`manage.py worker dispatch`, `manage.py worker deliveries`), on any
number of machines.

A stop first tells the long loops to end their runs now (`jobs.stopping`), so
the clusters wind down in a second or two rather than after the runs in progress.
"""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from agentfield_site.jobs import stopping
from agentfield_site.lib.children import stop_with_parent

CLUSTERS = ("dispatch", "deliveries")


def cluster_env(role: str, stop_file: str = "") -> dict[str, str]:
    """The environment that makes `qcluster` serve `role`'s queue (and look for `stop_file`)."""
    env = dict(os.environ)
    env.pop(stopping.STOP_FILE, None)
    if stop_file:
        env[stopping.STOP_FILE] = stop_file
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
        # Made only when a stop is asked for (nothing is left behind by a killed worker),
        # named so that no other worker's stop can be taken for this one's.
        stop_file = os.path.join(tempfile.gettempdir(), f"agentfield-worker-{os.getpid()}-{uuid.uuid4().hex}.stop")
        stopping_now = False

        def stop(*_) -> None:
            nonlocal stopping_now
            # At once, in the handler: a Ctrl-C reaches the clusters at the same moment.
            stopping.request(stop_file)
            stopping_now = True

        # Before the children start: a signal meanwhile stops them too.
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        children = {}
        try:
            for role in roles:
                if not stopping_now:
                    children[role] = subprocess.Popen(
                        command, env=cluster_env(role, stop_file), cwd=settings.BASE_DIR,
                        # A worker killed outright (SIGKILL) takes its clusters with it.
                        preexec_fn=stop_with_parent(os.getpid()),
                    )
            failed = self._supervise(children, stop_file, lambda: stopping_now)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(stop_file)
        if failed:
            raise CommandError(f"{failed}; stopped the rest.")

    def _supervise(self, children: dict[str, subprocess.Popen], stop_file: str, stopped) -> str | None:
        """Until `stopped()` or a cluster's exit; then stop them all. What failed, if anything did."""
        failed = None
        while not stopped() and failed is None:
            for role, child in children.items():
                if child.poll() is not None:
                    failed = f"the {role} cluster exited with {child.returncode}"
                    break
            else:
                time.sleep(0.2)
        stopping.request(stop_file)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            child.wait()
        return failed
