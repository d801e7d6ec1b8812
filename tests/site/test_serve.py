"""`manage.py serve` (what `make run` runs): real daphne, qcluster and demo-agent children."""

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from devtools.processes import ROOT, children_of, free_port, serving
from devtools.waiting import wait_for

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
