"""The demo agent's side of the protocol against a live server: key, register, report."""

import sys
import threading
from http.server import ThreadingHTTPServer

import pytest

from demo_agent.server import ControlPlane, Handler, process, run_execution
from devtools.waiting import wait_for
from executions import dispatch, nodes, submission
from executions.models import AgentNode, Execution
from observability.models import PlatformEvent

pytestmark = pytest.mark.django_db(transaction=True)


def test_process_counts_and_summarizes():
    assert process({"document": "one two three"}) == {"summary": "one two three", "words": 3, "document": "one two three"}
    long = process({"document": " ".join(["w"] * 20)})
    assert long["words"] == 20 and long["summary"].endswith("...")


def test_sends_the_api_key_when_keys_are_configured(live_server, settings):
    settings.API_KEYS = ["k1"]
    assert not ControlPlane(live_server.url, "analyzer").register("http://127.0.0.1:1")
    with_key = ControlPlane(live_server.url, "analyzer", api_key="k1")
    assert with_key.register("http://127.0.0.1:1")
    assert with_key.heartbeat() == 200
    assert AgentNode.objects.get(pk="analyzer").reasoner_ids() == ["process"]


def test_reports_like_the_sdk_after_a_202(live_server, node, agent):
    agent.default.status, agent.default.body = 202, {"status": "processing"}
    execution, _ = submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)
    dispatch.run(execution.id)
    run_execution(ControlPlane(live_server.url, "analyzer"), execution.id, execution.run_id, {"document": "a b"})
    execution = Execution.objects.get(pk=execution.id)
    assert execution.status == "succeeded"
    assert execution.result == {"summary": "a b", "words": 2, "document": "a b"}
    types = list(PlatformEvent.objects.filter(execution_id=execution.id).values_list("type", flat=True))
    assert types == ["execution.created", "execution.started", "execution.completed", "execution.log"]


def test_the_control_plane_reads_a_202_before_it_hangs_up(live_server):
    """A connection closed with the 202's body unread is a reset, which the agent logs as an error."""
    errors: list[BaseException] = []

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address) -> None:
            errors.append(sys.exc_info()[1])

    reported: list[str] = []

    class Reporting(ControlPlane):
        def report(self, execution_id: str, run_id: str, status: str, **extra) -> None:
            super().report(execution_id, run_id, status, **extra)
            if status != "running":
                reported.append(execution_id)  # the agent's last call about it: nothing follows

    handler = type("BoundHandler", (Handler,), {"control_plane": Reporting(live_server.url, "analyzer")})
    httpd = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
        nodes.register({"id": "analyzer", "base_url": base_url, "reasoners": [{"id": "process"}]})
        ids = []
        for n in range(3):
            execution, _ = submission.submit(
                submission.Request(target="analyzer.process", input={"document": f"doc {n}"}), enqueue=False
            )
            assert dispatch.run(execution.id) == "accepted"
            ids.append(execution.id)
        wait_for(lambda: Execution.objects.filter(pk__in=ids, status="succeeded").count() == 3, timeout=30,
                 what="the agent's callbacks")
        # Its logs and last event come after the status: a request still arriving when the
        # test ends writes while the database is flushed (a deadlock in teardown, once in CI).
        wait_for(lambda: sorted(reported) == sorted(ids), timeout=30, what="the agent's last calls")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert errors == []
