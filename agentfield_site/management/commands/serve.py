"""`manage.py serve`: the embedded default in one command (what `make run` calls).

Starts the web tier (`--web-processes` daphne processes, by default one per core),
the django-q2 workers (`manage.py worker`) and the demo agent as child processes,
prints the URLs, and stops them all on Ctrl-C.

The daphne processes share one listening socket, bound once here and handed to
each (`daphne --fd`): the kernel spreads connections over them, with no proxy in
front. One that dies is started again on the same socket while the others keep
serving (a process that keeps dying, 5 times within a minute, ends `serve`).
When any other child exits on its own, the rest are stopped and `serve` exits
non-zero with the reason as its last line, so `make run` fails loudly instead of
half-running. Production may run the same processes under a real supervisor
instead (README, "Production").
"""

import contextlib
import errno
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.http.request import split_domain_port, validate_host

from agentfield_site.auth import keys_required
from agentfield_site.lib.children import stop_with_parent
from agentfield_site.lib.loopback import is_loopback
from agentfield_site.models import ApiKey

# The demo agent's name among the supervised processes: it stops first.
AGENT = "demo-agent"


def _python_as_typed() -> str:
    """This interpreter as one would type it here: relative to the working directory when inside it."""
    path = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd() + os.sep) else sys.executable
    return shlex.quote(path)


def listen(host: str, port: int) -> socket.socket:
    """The web tier's listening socket, bound once for every daphne process; CommandError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As daphne does: a port left in TIME_WAIT by a previous run is free.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CommandError(
                f"port {port} is in use (another `make run`?): stop it, or choose another with PORT=..."
            ) from None
        raise
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def probe_host(address: str) -> str:
    """The Host header for serve's own health probe: `address`, or a name ALLOWED_HOSTS accepts.

    Production sets ALLOWED_HOSTS to its public names only (README, "Production"), and
    Django answers 400 to any other Host: a probe of http://127.0.0.1:PORT/health would
    then never see its 200. The probe is made on loopback but names a host Django serves.
    """
    allowed = settings.ALLOWED_HOSTS
    if validate_host(split_domain_port(address)[0], allowed):
        return address
    for pattern in allowed:
        name = pattern.lstrip(".")
        if name and name != "*" and validate_host(name, allowed):
            return name
    return address


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to report, never one to follow off this machine."""

    def redirect_request(self, *args, **kwargs):
        return None


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


class Supervisor:
    """Child processes started together and stopped together, in reverse order.

    A child started with `restart=True` is started again when it exits (the web
    processes), unless it exited `RESTART_LIMIT` times within `RESTART_WINDOW` seconds.
    """

    RESTART_LIMIT = 5
    RESTART_WINDOW = 60.0

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self._specs: dict[str, dict] = {}
        self._exits: dict[str, list[float]] = {}
        self.restarts = 0

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None, *,
              restart: bool = False, pass_fds: tuple[int, ...] = ()) -> None:
        self._specs[name] = {"command": command, "env": env, "restart": restart, "pass_fds": pass_fds}
        self.children.append((name, self._spawn(name)))

    def _spawn(self, name: str) -> subprocess.Popen:
        spec = self._specs[name]
        # Own session: Ctrl-C reaches `serve` only, which then stops each child in turn.
        return subprocess.Popen(spec["command"], start_new_session=True, env=spec["env"], pass_fds=spec["pass_fds"],
                                preexec_fn=stop_with_parent(os.getpid()))

    def first_exit(self) -> str | None:
        """Why the first child that ended for good did, or None while all run (restarting those that may)."""
        for index, (name, child) in enumerate(self.children):
            if child.poll() is None:
                continue
            reason = f"{name} {describe_exit(child.returncode)}"
            if not self._specs[name]["restart"]:
                return reason
            now = time.monotonic()
            recent = [t for t in self._exits.get(name, []) if now - t < self.RESTART_WINDOW] + [now]
            self._exits[name] = recent
            if len(recent) >= self.RESTART_LIMIT:
                return f"{reason} {len(recent)} times within {self.RESTART_WINDOW:.0f} s"
            sys.stderr.write(f"{reason}; starting it again\n")
            self.children[index] = (name, self._spawn(name))
            self.restarts += 1
        return None

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop every child, the agent first: SIGTERM to its main process, SIGKILL to its group after `grace`.

        The SIGTERM goes to the main process only, as a supervisor stops a service: the
        worker stops its django-q2 clusters in order, and a SIGTERM to its whole group
        would reach their own children too, leaving each cluster waiting on them until
        the SIGKILL. The SIGKILL to the group after leaves no process behind.
        """
        # The agent alone first, so it can still tell the control plane it is leaving;
        # then the rest together, each winding down while the others do.
        agent = [child for name, child in self.children if name == AGENT]
        rest = [child for name, child in self.children if name != AGENT]
        for group in (agent, rest):
            for child in group:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for child in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=max(0.0, deadline - time.monotonic()))
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()


class Command(BaseCommand):
    help = "Run daphne, the django-q2 workers and the demo agent together."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=None, help="default: PORT (environment, then .env), 8080")
        parser.add_argument("--no-agent", action="store_true", help="Do not start the demo agent.")
        parser.add_argument("--no-worker", action="store_true",
                            help="Do not start the workers (they run elsewhere): the web tier only.")
        parser.add_argument("--migrate", action="store_true",
                            help="Apply migrations and collect static files first, once the port is bound "
                                 "(a busy port is reported before anything else runs): what `make run` does.")
        parser.add_argument("--web-processes", type=int, default=None,
                            help="daphne processes sharing the port; default: WEB_PROCESSES, else one per core")

    def handle(self, *args, port: int | None, no_agent: bool, no_worker: bool, web_processes: int | None,
               migrate: bool, **options) -> None:
        port = port or settings.PORT
        web_processes = web_processes or settings.WEB_PROCESSES or os.cpu_count() or 1
        if web_processes < 1:
            raise CommandError("--web-processes must be at least 1.")
        host = settings.HOST
        # A database not migrated yet has no keys to ask about: with --migrate, ask once it is.
        if not migrate:
            self._refuse_an_open_api_on_the_network(host)
        sock = listen(host, port)
        try:
            if migrate:
                # Connections that arrive meanwhile wait in the socket's backlog for daphne.
                call_command("migrate", interactive=False)
                call_command("collectstatic", interactive=False, verbosity=0)
                self._refuse_an_open_api_on_the_network(host)
            admin = self._ensure_admin() if not no_agent else ""
        except BaseException:
            sock.close()
            raise
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        supervisor = Supervisor()
        failure = None
        try:
            failure = self._start_all(supervisor, sock, host, port, web_processes, no_worker, no_agent, admin,
                                      lambda: stopping)
            while failure is None and not stopping:
                time.sleep(0.2)
                failure = supervisor.first_exit()
            if failure is None:
                # A worker finishing its tasks takes a few seconds: say why nothing happens meanwhile.
                self.stdout.write("Stopping: each process finishes what it holds (up to 10 s), then exits.")
        finally:
            supervisor.stop_all()
            sock.close()
        if failure is not None:
            # After every child is reaped, so the reason is the last line printed.
            raise CommandError(f"{failure}; stopped the rest.")
        self.stdout.write("Stopped.")

    @staticmethod
    def _refuse_an_open_api_on_the_network(host: str) -> None:
        if not is_loopback(host) and not keys_required():
            raise CommandError(
                f"Refusing to listen on {host}: no API key is configured, so the API would be open "
                "to anyone on the network. Set API_KEYS (or create a key in the admin), or listen "
                "on this machine only with HOST=127.0.0.1."
            )

    def _start_all(self, supervisor: Supervisor, sock: socket.socket, host: str, port: int, web_processes: int,
                   no_worker: bool, no_agent: bool, admin: str, stopping) -> str | None:
        """Start the processes; the reason one failed to come up, or None."""
        py = sys.executable
        base = f"http://localhost:{port}"
        # This machine reaches daphne on loopback unless it listens on one other address only.
        local = "127.0.0.1" if host in ("0.0.0.0", "::") or is_loopback(host) else host
        fd = sock.fileno()
        # Each knows how many share the socket, to take connections in turn (`shared_socket`).
        web_env = {**os.environ, "WEB_PROCESSES": str(web_processes)}
        for n in range(web_processes):
            name = "daphne" if web_processes == 1 else f"daphne-{n + 1}"
            supervisor.start(name, [py, "-m", "daphne", "--fd", str(fd), "agentfield_site.asgi:application"],
                             env=web_env, restart=True, pass_fds=(fd,))
        if not no_worker:
            supervisor.start("worker", [py, "manage.py", "worker"])
        failure = self._wait_healthy(supervisor, f"http://{local}:{port}/health", stopping)
        if failure is not None or stopping():
            return failure
        if not no_agent:
            # No --port: the agent takes DEMO_AGENT_PORT or any free port, and registers it.
            server = base if local == "127.0.0.1" else f"http://{local}:{port}"
            supervisor.start(
                AGENT, [py, "-m", "demo_agent", "--node-id", "analyzer", "--server", server],
                env={**os.environ, **self._demo_agent_key()},
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"\n  Web        {web_processes} daphne process{'es' if web_processes > 1 else ''} on port {port}\n"
                f"  API        {base}/api/v1/\n"
                f"  Dashboard  {base}/dashboard/\n"
                f"  Admin      {base}/admin/{f'  ({admin})' if admin else ''}\n"
                f"  API docs   {base}/api/docs/\n"
                f"  Health     {base}/health\n"
                f"  Metrics    {base}/metrics\n\n  Ctrl-C stops everything.\n"
            )
        )
        return None

    def _wait_healthy(self, supervisor: Supervisor, url: str, stopping, timeout: float = 30.0) -> str | None:
        deadline = time.monotonic() + timeout
        address = urllib.parse.urlsplit(url).netloc
        request = urllib.request.Request(url, headers={"Host": probe_host(address)})
        opener = urllib.request.build_opener(_NoRedirects)
        last = ""
        while time.monotonic() < deadline and not stopping():
            failure = supervisor.first_exit()
            if failure is not None:
                return failure
            try:
                with opener.open(request, timeout=1) as response:
                    if response.status == 200:
                        return None
            except urllib.error.HTTPError as exc:
                exc.close()
                last = f"HTTP {exc.code}"
                time.sleep(0.2)
            except OSError:
                time.sleep(0.2)
        if stopping():
            return None
        answered = f" (its last answer: {last})" if last else ""
        return f"daphne did not answer {url} with 200 within {timeout:.0f} s{answered}"

    def _demo_agent_key(self) -> dict[str, str]:
        """An agent key of the demo agent's own, whether or not the API is open yet.

        The tour makes the first key while `make run` is up: an agent without a key
        would then get 401 on every call. Its key is marked `demo`, so on its own it does
        not close the open API (`auth.keys_required`). The same row each run, with a
        fresh secret: the nodes it registered stay its own.
        """
        key = ApiKey.objects.filter(demo=True).order_by("pk").first()
        raw = key.reissue() if key is not None else ApiKey.create("demo-agent", ApiKey.Scope.AGENT, demo=True)[1]
        return {"AGENTFIELD_API_KEY": raw}

    def _ensure_admin(self) -> str:
        """On a fresh database, make a staff account for the tour and say its password once.

        Only with the demo agent, the local development stack: the production web tier
        (`--no-agent`) writes no password to its logs (README: `manage.py createsuperuser`).
        Returns the account's line in the banner printed once everything is up (the
        line printed here scrolls away behind the start-up logs): its name, and its
        password on the run that made it.
        """
        User = get_user_model()
        existing = User.objects.filter(is_superuser=True).order_by("pk").first()
        if existing is not None:
            # Its password was printed on the run that made it (or chosen by whoever made it).
            name = existing.get_username()
            # As typed in this directory: `make run`'s python is the venv's, not the one on PATH.
            command = f"{_python_as_typed()} manage.py changepassword {name}"
            unused = "; ADMIN_PASSWORD applies only when serve makes the account" if os.environ.get("ADMIN_PASSWORD") else ""
            self.stdout.write(
                f"Staff account for the admin: {name}. Password lost? "
                f"`{command}` sets a new one{unused}."
            )
            return f"{name}; password lost? {command}"
        password = os.environ.get("ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "admin@localhost", password)
        self.stdout.write(
            self.style.WARNING(f"Created the staff account admin / {password} (change it in the admin).")
        )
        if settings.DEBUG:
            self.stdout.write("DEBUG is on.")
        return f"admin / {password}, shown on this run only"
