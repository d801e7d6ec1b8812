"""Start and kill real processes (daphne, qcluster, the demo agent) for tests, bench and soak.

Every process gets the test database's connection string, short sweeper and retry
timings, and loopback in the webhook allow-list. Loops that wait are bounded.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import requests
from django.db import connection

from devtools.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    user = s.get("USER") or "postgres"
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{s['NAME']}"


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path, port: int | None = None) -> None:
        self.name, self.popen, self.log_path, self.port = name, popen, log_path, port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, as in a crash.

        The group outlives a leader that has exited: children it left behind
        (daemonized workers) go too.
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the leader, as a supervisor stops a service, then SIGKILL after `grace`.

        Only the leader: qcluster orchestrates its own children's shutdown, and a
        SIGTERM to its whole group can leave it waiting on a dead child's lock.
        """
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ProcessEnv:
    """A set of child processes sharing one environment and one database."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.procs: list[Proc] = []

    @classmethod
    def for_current_database(cls, tmp: Path) -> "ProcessEnv":
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": database_url(),
                "TEST_DB_NAME": "",
                "DEBUG": "false",
                "PYTHONUNBUFFERED": "1",
                "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "SWEEP_TICK_SECONDS": "0.1",
                "SWEEP_LEASE_SECONDS": "2",
                "SWEEP_RUN_SECONDS": "3",
                "Q_TIMEOUT": "60",
                "Q_RETRY": "90",
                "Q_WORKERS": "3",
                "Q_DELIVERY_WORKERS": "3",
                "WEBHOOK_RETRY_SCHEDULE": "0.2,0.4,0.6",
                "WEBHOOK_LEASE_SECONDS": "3",
                # Breaker pauses shrink with the retry schedule, as they would relative to its span.
                "WEBHOOK_BREAKER_COOLDOWN": "0.5",
                "WEBHOOK_BREAKER_MAX_COOLDOWN": "2",
                "DISPATCH_LEASE_SECONDS": "3",
                "AGENT_CALL_TIMEOUT": "10",
                "OBSERVABILITY_RETRY_SCHEDULE": "0.2,0.4",
                "STREAM_POLL_SECONDS": "0.1",
                "LOG_LEVEL": "INFO",
            }
        )
        return cls(env, tmp)

    def _start(self, name: str, args: list[str], port: int | None = None, extra_env: dict | None = None) -> Proc:
        log_path = self.tmp / f"{name}-{len(self.procs)}.log"
        env = {**self.env, **(extra_env or {})}
        popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = Proc(name, popen, log_path, port)
        self.procs.append(proc)
        return proc

    def daphne(self, extra_env: dict | None = None, port: int | None = None) -> Proc:
        """Start daphne; `port` reuses a stopped server's port (a restart clients reconnect to)."""
        port = port or free_port()
        proc = self._start(
            "daphne",
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "agentfield_site.asgi:application"],
            port,
            extra_env,
        )
        wait_for(lambda: requests.get(f"{proc.url}/health", timeout=1).ok, what=f"daphne on {port}\n{proc.log()}")
        return proc

    def worker(self, extra_env: dict | None = None) -> Proc:
        """Both django-q2 clusters (dispatch, deliveries) under `manage.py worker`, one process group."""
        return self._start("worker", [sys.executable, "manage.py", "worker"], None, extra_env)

    def demo_agent(self, control_plane_url: str, node_id: str = "analyzer", extra_env: dict | None = None) -> Proc:
        port = free_port()
        proc = self._start(
            "agent",
            [sys.executable, "-m", "demo_agent", "--port", str(port), "--node-id", node_id, "--server", control_plane_url],
            port,
            extra_env,
        )
        return proc

    def script(self, name: str, args: list[str], port: int | None = None, extra_env: dict | None = None) -> Proc:
        """Run `python <args>` from the repository root (e.g. an agent built with the SDK)."""
        return self._start(name, [sys.executable, *args], port, extra_env)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def kill_all(self) -> None:
        """SIGKILL every process: the end of a test, where a graceful stop proves nothing.

        A worker's graceful stop takes seconds (django-q2 winds down two clusters);
        the tests that are about stopping call `stop` themselves.
        """
        for proc in reversed(self.procs):
            proc.kill()


def children_of(pid: int) -> dict[int, str]:
    """The direct children of `pid`, with their command lines (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            # The field after the parenthesised command name is the state, then the parent id.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[int(stat.parent.name)] = cmdline
    return found


@contextlib.contextmanager
def serving(proc_env: ProcessEnv, port: int, extra_env: dict | None = None, args: tuple[str, ...] = ()):
    """`manage.py serve` (what `make run` runs) on `port`; yields it and the children seen."""
    serve = proc_env.script("serve", ["manage.py", "serve", *args], port, {"PORT": str(port), **(extra_env or {})})
    seen: dict[int, str] = {}
    try:
        yield serve, seen
    finally:
        seen.update(children_of(serve.popen.pid))
        serve.stop(grace=40)
        for pid in seen:  # never leave a child behind, whatever the test asserted
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
