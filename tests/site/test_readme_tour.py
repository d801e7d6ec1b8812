"""The README's tour, run as written against a `make run`-style stack.

`manage.py serve` starts daphne, a worker and the demo agent (what `make run`
does), on the default retry schedule and with the API open; the tour's admin key
is then made with step 1's command, as the reader does. Every `sh` block of
the tour runs in bash, in order, and every `python` block in Python; the only
changes are the ports (8080 and 9000 become free ones) and the `sleep`s: a
`sleep N` waits until nothing is in flight (every execution ended, every
delivery sent or dead-lettered, the collector caught up), for at most five
times N, and the block goes on from there as the reader's would. A line that starts the
development receiver (`manage.py listen ...`) is run here as a process with the
same arguments, replacing the one before, as a reader would in another
terminal. `shell` blocks (exports, endless streams) are for reading only.
"""

import contextlib
import json
import re
import shlex
import subprocess
import sys

import pytest
import requests

from devtools.processes import ROOT, free_port, serving
from devtools.waiting import wait_for
from executions.models import TERMINAL, Execution
from observability.forwarder import configuration
from webhooks.models import Delivery

pytestmark = pytest.mark.processes
SLOWER = 5


def settled() -> bool:
    """Nothing in flight: what a reader's `sleep` in the tour waits for."""
    return (
        not Execution.objects.exclude(status__in=TERMINAL).exists()
        and not Delivery.objects.filter(status__in=[Delivery.Status.PENDING, Delivery.Status.IN_FLIGHT]).exists()
        and configuration.status()["backlog"] == 0
    )


def tour() -> str:
    return (ROOT / "README.md").read_text().split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]


def tour_blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(sh|python)\n(.*?)```", tour(), re.S)


def make_key(env: dict[str, str]) -> str:
    """Step 1's key, made by the command the tour gives (`export AGENTFIELD_API_KEY=$(...)`)."""
    command = re.search(r"^export AGENTFIELD_API_KEY=\$\((.+)\)$", tour(), re.M).group(1)
    # The reader's checkout has its venv in .venv; CI's copy borrows one from elsewhere: this one.
    command = command.replace(".venv/bin/python", shlex.quote(sys.executable), 1)
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.strip()


class Tour:
    def __init__(self, proc_env, port: int, key: str) -> None:
        self.proc_env, self.port, self.listen_port, self.key = proc_env, port, free_port(), key
        self.listener = None
        self.outputs: list[str] = []

    def local(self, text: str) -> str:
        return (
            text.replace("localhost:8080", f"localhost:{self.port}")
            .replace("localhost:9000", f"localhost:{self.listen_port}")
            .replace("--port 9000", f"--port {self.listen_port}")
        )

    @staticmethod
    def sleep(seconds: int) -> None:
        """A reader's `sleep`: until the stack is idle, for at most SLOWER times as long.

        The waits are for a person on an idle laptop; the suite shares two cores with
        its processes. Past the bound the block goes on, as after the sleep it replaces:
        the checks on what it printed tell whether the wait was long enough.
        """
        with contextlib.suppress(TimeoutError):
            wait_for(settled, timeout=seconds * SLOWER, interval=0.2, what="the stack to be idle")

    def listen(self, line: str) -> None:
        if self.listener is not None:
            self.listener.stop()
        args = shlex.split(self.local(line).split("manage.py", 1)[1])
        self.listener = self.proc_env.script("listen", ["manage.py", *args], self.listen_port)
        wait_for(lambda: "Listening on" in self.listener.log(), timeout=30, what=f"listen\n{self.listener.log()}")

    def run(self, kind: str, block: str) -> str:
        if "manage.py listen" in block:
            self.listen(block.strip())
            return ""
        command = ["bash", "-euo", "pipefail", "-c"] if kind == "sh" else [sys.executable, "-c"]
        # `sleep N` lines split a block: its parts run in order, a reader's sleep between them.
        pieces = re.split(r"^sleep (\d+)$", block, flags=re.M) if kind == "sh" else [block]
        output = self.execute(command, pieces[0])
        for seconds, part in zip(pieces[1::2], pieces[2::2], strict=True):
            self.sleep(int(seconds))
            output += self.execute(command, part)
        self.outputs.append(output)
        return output

    def execute(self, command: list[str], text: str) -> str:
        env = {**self.proc_env.env, "AGENTFIELD_API_KEY": self.key}
        done = subprocess.run([*command, self.local(text)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{text}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def heard(self, text: str, times: int = 1) -> str:
        return wait_for(lambda: self.listener.log().count(text) >= times and self.listener.log(), timeout=30,
                        what=f"{text!r} x{times} from the receiver\n{self.listener.log()}")


def last_json(output: str) -> dict:
    """The last JSON document curl printed (curl adds no newline: two may share a line)."""
    decoder, text, docs, at = json.JSONDecoder(), output.strip().splitlines()[-1], [], 0
    while at < len(text):
        doc, at = decoder.raw_decode(text, at)
        docs.append(doc)
    return docs[-1]


def test_the_readme_tour_works_as_written(proc_env):
    blocks = tour_blocks()
    assert len(blocks) >= 10, "the tour lost its runnable blocks"
    port = free_port()
    env = {"API_KEYS": "", "WEBHOOK_ALLOWED_HOSTS": "localhost,127.0.0.1",
           "WEBHOOK_RETRY_SCHEDULE": "5,30,120,600,1800"}
    with serving(proc_env, port, env) as (serve, _):
        api = f"http://127.0.0.1:{port}/api/v1"
        wait_for(lambda: requests.get(f"{api}/nodes/analyzer", timeout=2).ok, timeout=60,
                 what=f"the stack\n{serve.log()}")
        # "With `make run` up": the worker too, which starts after daphne (slower on PostgreSQL + Redis).
        warm_up = requests.post(f"{api}/execute/async/analyzer.process",
                                json={"input": {"document": "warm up"}}, timeout=10).json()["execution_id"]
        wait_for(lambda: requests.get(f"{api}/executions/{warm_up}", timeout=5).json()["status"]
                 == "succeeded", timeout=60, what=f"the worker's first execution\n{serve.log()}")
        # The first key, made while the stack runs: the demo agent must go on working.
        tour = Tour(proc_env, port, make_key({**proc_env.env, **env}))
        steps = iter(blocks)

        # 1. The key: the nodes list, with it (and a 401 without).
        assert "analyzer" in tour.run(*next(steps))
        assert requests.get(f"http://127.0.0.1:{port}/api/v1/nodes", timeout=5).status_code == 401
        # 2. An execution by curl (the sync call: the result in the answer).
        done = last_json(tour.run(*next(steps)))
        assert done["status"] == "succeeded" and done["result"]["words"] == 1
        # 3. The receiver, then a webhook it verifies.
        tour.run(*next(steps))
        tour.run(*next(steps))
        # The receiver prints the request, the verdict, the body, then its answer: wait for the last.
        log = tour.heard("<- 200")
        assert "signature: verified" in log and '"event": "execution.completed"' in log
        # 4. Verify on your side (defines a function), 5. the SDK, with its webhook.
        tour.run(*next(steps))
        assert "'words': 4" in tour.run(*next(steps))
        tour.heard("signature: verified", 2)
        # 6. The dead letter queue at once with --fail 410, then a redrive to a healthy receiver.
        tour.run(*next(steps))
        dlq = last_json(tour.run(*next(steps)))
        assert dlq["total_count"] == 1 and dlq["entries"][0]["last_status"] == 410
        tour.heard("<- 410")
        tour.run(*next(steps))
        redrive = last_json(tour.run(*next(steps)))
        assert redrive["queued"] == 1
        tour.heard("signature: verified")
        # 8. The collector, its batches verified by the same secret.
        status = last_json(tour.run(*next(steps)))
        assert status["enabled"] is True
        tour.heard("-> POST /collect")
        assert "signature: INVALID" not in tour.listener.log()
        # 9. Metrics.
        assert 'agentfield_executions_total{status="succeeded"}' in tour.run(*next(steps))
        assert next(steps, None) is None, "a new tour block: give it a check here"
