"""`manage.py serve` (what `make run` runs): real daphne, qcluster and demo-agent children."""

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model

from agentfield_site.models import ApiKey
from devtools.processes import ROOT, children_of, free_port, serving
from devtools.waiting import wait_for
from executions.models import AgentNode

pytestmark = pytest.mark.processes


def _node(url: str) -> dict | None:
    response = requests.get(url, timeout=2)
    return response.json() if response.ok else None


def _last_line(log: str) -> str:
    return log.strip().splitlines()[-1]


def test_a_busy_port_is_named_and_serve_exits_non_zero(proc_env):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with serving(proc_env, port) as (serve, _):
            code = serve.popen.wait(timeout=60)
    assert code == 1
    assert _last_line(serve.log()).startswith(f"CommandError: port {port} is in use"), serve.log()
    assert "Traceback" not in serve.log()


def test_agent_takes_a_free_port_and_a_dead_child_stops_everything(proc_env):
    port = free_port()
    # The port the demo agent used to take blindly (PORT + 1) is busy.
    with socket.socket() as neighbour, serving(proc_env, port) as (serve, seen):
        with contextlib.suppress(OSError):
            neighbour.bind(("127.0.0.1", port + 1))
            neighbour.listen()
        api = f"http://127.0.0.1:{port}/api/v1"
        node = wait_for(lambda: _node(f"{api}/nodes/analyzer"), timeout=60,
                        what=f"the demo agent's registration\n{serve.log()}")
        assert not node["base_url"].endswith(f":{port + 1}")
        assert requests.get(f"{node['base_url']}/health", timeout=2).json()["node_id"] == "analyzer"

        seen.update(children_of(serve.popen.pid))
        names = {pid: ("demo_agent" in cmd and "agent") or ("daphne" in cmd and "daphne") or "qcluster"
                 for pid, cmd in seen.items()}
        # One daphne per core by default (--web-processes), all on the one port.
        assert sorted(set(names.values())) == ["agent", "daphne", "qcluster"], seen
        assert list(names.values()).count("daphne") == (os.cpu_count() or 1), seen
        agent = next(pid for pid, name in names.items() if name == "agent")
        os.kill(agent, signal.SIGKILL)
        code = serve.popen.wait(timeout=60)

    assert code == 1
    assert _last_line(serve.log()) == "CommandError: demo-agent was killed by SIGKILL; stopped the rest.", serve.log()
    for pid in seen:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_demo_agent_registers_the_port_it_was_given(proc_env):
    web = proc_env.daphne()
    port = free_port()
    agent = proc_env.script(
        "agent", ["-m", "demo_agent", "--node-id", "analyzer", "--server", web.url], port, {"DEMO_AGENT_PORT": str(port)}
    )
    node = wait_for(lambda: _node(f"{web.url}/api/v1/nodes/analyzer"), timeout=30,
                    what=f"registration\n{agent.log()}")
    assert node["base_url"] == f"http://127.0.0.1:{port}"


def test_make_run_leaves_port_to_the_environment_and_dot_env():
    env = {k: v for k, v in os.environ.items() if k != "PORT"}
    dry_run = subprocess.run(["make", "-n", "run"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    serve_line = next(line for line in dry_run.stdout.splitlines() if "manage.py serve" in line)
    # A PORT set here would hide the one in .env (settings read .env; the environment wins).
    assert "PORT=" not in serve_line


def test_the_first_key_made_while_it_runs_leaves_the_demo_agent_working(proc_env):
    """README tour, step 1: with `make run` up, the reader makes the first key in the admin."""
    port = free_port()
    with serving(proc_env, port, {"API_KEYS": ""}) as (serve, _):
        api = f"http://127.0.0.1:{port}/api/v1"
        wait_for(lambda: _node(f"{api}/nodes/analyzer"), timeout=60, what=f"the demo agent\n{serve.log()}")
        # The development stack made the tour's staff account; the API is still open.
        assert "Created the staff account admin / " in serve.log()
        # Its password again in the banner, below the start-up logs that push the first line away.
        password = serve.log().split("Created the staff account admin / ", 1)[1].split()[0]
        assert f"/admin/  (admin / {password}, shown on this run only)" in serve.log(), serve.log()
        assert get_user_model().objects.filter(username="admin", is_staff=True).exists()
        assert requests.get(f"{api}/executions", timeout=5).status_code == 200

        _, raw = ApiKey.create("tour", ApiKey.Scope.ADMIN)  # what the admin's "Add API key" does
        assert requests.get(f"{api}/executions", timeout=5).status_code == 401
        made = time.time()
        # A sync execution: dispatch, the agent's 202, then its status callback on its own key.
        done = requests.post(f"{api}/execute/analyzer.process", headers={"X-API-Key": raw},
                             json={"input": {"document": "after the key"}}, timeout=60)
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "succeeded" and done.json()["result"]["words"] == 3
        wait_for(lambda: AgentNode.objects.get(pk="analyzer").last_heartbeat.timestamp() > made + 1,
                 timeout=20, what=f"a heartbeat accepted after the key\n{serve.log()}")
        assert AgentNode.objects.get(pk="analyzer").health_status == "active"


def test_ctrl_c_stops_the_worker_as_it_stops_on_its_own(proc_env):
    port = free_port()
    # A sweeper's run of 30 s: a stop that waited for the run in progress would take most of it.
    with serving(proc_env, port, {"Q_LOG_LEVEL": "INFO", "SWEEP_RUN_SECONDS": "30"}, args=("--no-agent",)) as (serve, _):
        wait_for(lambda: serve.log().count(" running.") >= 2, timeout=60,
                 what=f"both clusters running\n{serve.log()}")
        started = time.monotonic()
        serve.popen.send_signal(signal.SIGINT)
        code = serve.popen.wait(timeout=60)
        took = time.monotonic() - started
    assert code == 0, serve.log()
    assert "Stopping: each process finishes what it holds" in serve.log(), serve.log()
    assert serve.log().rstrip().endswith("Stopped."), "the last line says it is over"
    # Each cluster finished its own orderly stop, within the grace before a SIGKILL.
    assert serve.log().count("has stopped.") == 2, serve.log()
    assert took < 6, f"{took:.1f} s\n{serve.log()}"


def test_a_killed_serve_takes_its_children_with_it(proc_env):
    # They went on serving unsupervised and held the port: the next `make run` refused to start.
    port = free_port()
    with serving(proc_env, port, args=("--no-agent", "--web-processes", "2")) as (serve, seen):
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok, timeout=60,
                 what=f"serve\n{serve.log()}")
        children = wait_for(lambda: (c := children_of(serve.popen.pid)) and len(c) == 3 and c, timeout=30,
                            what="two daphnes and the worker")
        seen.update(children)
        serve.popen.kill()
        serve.popen.wait(timeout=10)

        def alive() -> list[int]:
            return [pid for pid in children if os.path.exists(f"/proc/{pid}") and
                    open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]

        wait_for(lambda: not alive(), timeout=30, what=lambda: f"the children to stop: {alive()} still run")
    with socket.socket() as probe:  # and the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_the_production_web_tier_makes_no_staff_account(proc_env):
    port = free_port()
    with serving(proc_env, port, args=("--no-agent", "--no-worker")) as (serve, _):
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok, timeout=60,
                 what=f"serve\n{serve.log()}")
    assert not get_user_model().objects.exists()
    assert "password" not in serve.log().lower() and "staff account" not in serve.log()


def test_the_production_web_tier_comes_up_with_only_public_names_in_allowed_hosts(proc_env):
    """README, "Production": ALLOWED_HOSTS=agents.example.com, and serve probes daphne on loopback."""
    port = free_port()
    env = {"ALLOWED_HOSTS": "agents.example.com", "API_KEYS": "production-key"}
    with serving(proc_env, port, env, args=("--no-agent", "--no-worker")) as (serve, _):
        wait_for(lambda: "Ctrl-C stops everything." in serve.log() or serve.popen.poll() is not None, timeout=60,
                 what=f"serve\n{serve.log()}")
        assert serve.popen.poll() is None, serve.log()
        health = requests.get(f"http://127.0.0.1:{port}/health", headers={"Host": "agents.example.com"}, timeout=5)
        assert health.status_code == 200
    assert "DisallowedHost" not in serve.log()


def test_a_later_run_names_the_staff_account_and_how_to_reset_its_password(proc_env):
    get_user_model().objects.create_superuser("admin", "admin@localhost", "made-on-the-first-run")
    port = free_port()
    with serving(proc_env, port, {"ADMIN_PASSWORD": "ignored-now"}, args=("--no-worker",)) as (serve, _):
        wait_for(lambda: "Ctrl-C stops everything." in serve.log() or serve.popen.poll() is not None, timeout=60,
                 what=f"serve\n{serve.log()}")
    # The command as typed in the project's directory: `.venv/bin/python manage.py ...` under `make run`.
    inside = sys.executable.startswith(f"{ROOT}{os.sep}")
    python = shlex.quote(os.path.relpath(sys.executable, ROOT) if inside else sys.executable)
    assert f"Staff account for the admin: admin. Password lost? `{python} manage.py changepassword admin` sets a new one; " \
        "ADMIN_PASSWORD applies only when serve makes the account." in serve.log(), serve.log()
    assert f"/admin/  (admin; password lost? {python} manage.py changepassword admin)" in serve.log(), serve.log()
    assert "ignored-now" not in serve.log() and "made-on-the-first-run" not in serve.log()


def test_serve_migrate_reports_a_busy_port_before_it_migrates(proc_env, tmp_path):
    # `make run` is `serve --migrate`: a newcomer whose port is taken hears so at once,
    # not after a first run's migrations and static files.
    database = tmp_path / "fresh.sqlite3"
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with serving(proc_env, port, {"DATABASE_URL": f"sqlite:///{database}"}, ("--migrate",)) as (serve, _):
            code = serve.popen.wait(timeout=60)
    assert code == 1
    assert _last_line(serve.log()).startswith(f"CommandError: port {port} is in use"), serve.log()
    assert "Applying" not in serve.log() and not database.exists()


def test_serve_migrate_prepares_a_fresh_database_then_serves(proc_env, tmp_path):
    database = tmp_path / "fresh.sqlite3"
    port = free_port()
    fresh = {"DATABASE_URL": f"sqlite:///{database}"}
    with serving(proc_env, port, fresh, ("--migrate", "--no-agent", "--no-worker")) as (serve, _):
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok, timeout=120,
                 what=f"serve --migrate\n{serve.log()}")
    assert "Applying executions.0001_initial... OK" in serve.log(), serve.log()
