"""`manage.py serve`: the embedded default in one command (what `make run` calls).

Starts daphne, the django-q2 workers (`manage.py worker`) and the demo agent as child processes, prints
the URLs, and stops them all on Ctrl-C. Production runs the same processes under a
real supervisor instead (README, "Production").
"""

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from agentfield_site.auth import keys_required
from agentfield_site.lib.loopback import is_loopback
from agentfield_site.models import ApiKey


class Command(BaseCommand):
    help = "Run daphne, a django-q2 cluster and the demo agent together."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8080)))
        parser.add_argument("--no-agent", action="store_true", help="Do not start the demo agent.")

    def handle(self, *args, port: int, no_agent: bool, **options) -> None:
        host = settings.HOST
        if not is_loopback(host) and not keys_required():
            raise CommandError(
                f"Refusing to listen on {host}: no API key is configured, so the API would be open "
                "to anyone on the network. Set API_KEYS (or create a key in the admin), or listen "
                "on this machine only with HOST=127.0.0.1."
            )
        base = f"http://localhost:{port}"
        self._ensure_admin()
        py = sys.executable
        commands = [
            ("daphne", [py, "-m", "daphne", "-b", host, "-p", str(port), "agentfield_site.asgi:application"]),
            ("worker", [py, "manage.py", "worker"]),
        ]
        if not no_agent:
            agent_port = str(port + 1)
            commands.append(
                ("demo-agent", [py, "-m", "demo_agent", "--port", agent_port, "--node-id", "analyzer", "--server", base])
            )
        children = []
        for name, cmd in commands:
            env = None
            if name == "demo-agent":
                self._wait_healthy(f"http://127.0.0.1:{port}/health")
                env = {**os.environ, **self._demo_agent_key()}
            children.append((name, subprocess.Popen(cmd, start_new_session=True, env=env)))
        self.stdout.write(
            self.style.SUCCESS(
                f"\n  API        {base}/api/v1/\n"
                f"  Dashboard  {base}/dashboard/\n"
                f"  Admin      {base}/admin/\n"
                f"  API docs   {base}/api/docs/\n"
                f"  Health     {base}/health\n\n  Ctrl-C stops everything.\n"
            )
        )
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, child in children:
                    if child.poll() is not None:
                        self.stderr.write(f"{name} exited with {child.returncode}; stopping the rest.")
                        stopping = True
                time.sleep(0.5)
        finally:
            # The agent first, so it can still tell the control plane it is leaving.
            for _, child in reversed(children):
                self._stop(child)

    def _stop(self, child: subprocess.Popen, grace: float = 10.0) -> None:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()

    def _wait_healthy(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)

    def _demo_agent_key(self) -> dict[str, str]:
        """Once keys are enforced, the demo agent gets an agent key of its own (not an admin one).

        The same key row each run, with a fresh secret: the nodes it registered stay its own.
        """
        if not keys_required():
            return {}
        key = ApiKey.objects.filter(name="demo-agent", scope=ApiKey.AGENT).order_by("pk").first()
        raw = key.reissue() if key is not None else ApiKey.create("demo-agent", ApiKey.AGENT)[1]
        return {"AGENTFIELD_API_KEY": raw}

    def _ensure_admin(self) -> None:
        """On a fresh database, make a staff account for the tour and say its password once."""
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        password = os.environ.get("ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "admin@localhost", password)
        self.stdout.write(
            self.style.WARNING(f"Created the staff account admin / {password} (change it in the admin).")
        )
        if settings.DEBUG:
            self.stdout.write("DEBUG is on.")
