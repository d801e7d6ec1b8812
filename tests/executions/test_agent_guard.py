"""Calls to agents get the webhooks' guard: AGENT_ALLOWED_HOSTS at registration and at connect time,
no redirects, the cancel notice too, error bodies capped, ids that cannot bend the agent's URL."""

import socket
import threading
import time

import pytest

from devtools.loopback import LoopbackServer, Reply
from devtools.waiting import wait_for
from executions import cancellation, dispatch, nodes, submission
from executions.models import AgentNode, Execution

pytestmark = pytest.mark.django_db


def register(api, base_url: str, node_id: str = "guarded", reasoner: str = "process"):
    return api.post("/api/v1/nodes/register",
                    {"id": node_id, "base_url": base_url, "reasoners": [{"id": reasoner}]}, format="json")


@pytest.mark.parametrize(
    "base_url",
    ["http://169.254.169.254/latest", "http://10.0.0.1:8001", "http://[fe80::1]:8001", "http://192.168.1.10",
     "http://0.0.0.0:9595", "ftp://127.0.0.1/", "http://user:pw@127.0.0.1/", "http://127.0.0.1:1/?x=1"],
)
def test_registration_refuses_addresses_outside_the_allow_list(api, base_url):
    response = register(api, base_url)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "bad_request" and "base_url" in response.json()["message"]
    assert not AgentNode.objects.filter(pk="guarded").exists()


def test_loopback_by_default_judged_by_the_resolved_address_not_the_spelling(api, agent, settings):
    hex_spelling = f"http://0x7f000001:{agent.port}"
    assert register(api, hex_spelling).status_code == 201, "loopback is allowed by default, however spelled"
    settings.AGENT_ALLOWED_HOSTS = ["localhost"]  # a name only: 0x7f000001 is not it
    refused = register(api, hex_spelling)
    assert refused.status_code == 400 and "loopback" in refused.json()["message"]
    settings.AGENT_ALLOWED_HOSTS = ["10.0.0.0/8"]
    assert register(api, "http://10.1.2.3:8001").status_code == 201
    assert register(api, f"http://127.0.0.1:{agent.port}").status_code == 400


def _submit(node_id: str = "analyzer") -> Execution:
    return submission.submit(submission.Request(target=f"{node_id}.process", input={"secret": "VICTIM"}),
                             enqueue=False)[0]


def test_connect_time_check_refuses_what_registration_let_through(node, agent, settings):
    """The allow-list changed (or DNS did) after registration: the call is refused when it connects."""
    settings.AGENT_ALLOWED_HOSTS = []
    execution = _submit()
    assert dispatch.run(execution.id) == "failed"
    execution.refresh_from_db()
    assert execution.error_category == "agent_unreachable"
    assert "not allowed" in execution.error and "loopback" in execution.error
    assert agent.requests == [], "the blocked agent must never see the input"


def test_the_cancel_notice_is_guarded_too(node, agent, settings):
    agent.default.status, agent.default.body = 202, {"status": "processing"}
    execution = _submit()
    assert dispatch.run(execution.id) == "accepted"
    settings.AGENT_ALLOWED_HOSTS = []
    cancellation.cancel(execution.id, "stop")
    dispatch.notify_cancel(execution.id, node.base_url).result(timeout=5)  # the guard has spoken
    assert [r.path for r in agent.requests] == ["/reasoners/process"]
    settings.AGENT_ALLOWED_HOSTS = ["127.0.0.1"]
    dispatch.notify_cancel(execution.id, node.base_url)
    wait_for(lambda: len(agent.requests) >= 2, timeout=5, what="the cancel notice")
    assert agent.requests[-1].path == f"/_internal/executions/{execution.id}/cancel"


def test_an_agent_trickling_its_answer_to_a_cancel_notice_holds_no_thread_for_long(node, agent):
    """Each read met the 2 s timeout, so an agent sending a byte every 1.5 s held a web
    process thread (one per cancel) for as long as it liked."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.5):
                try:
                    conn.sendall(b"X")
                except OSError:
                    return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        started = time.monotonic()
        notices = [dispatch.notify_cancel(f"exec_trickle_{i}", base_url) for i in range(20)]
        pool = [t for t in threading.enumerate() if t.name.startswith("cancel-notice")]
        busy = len(pool)
        # Daemons: a web process that stops does not wait for notices (they are best effort).
        assert all(t.daemon for t in pool)
        for notice in notices:
            notice.result(timeout=30)
        took = time.monotonic() - started
    finally:
        stop.set()
        listener.close()
    assert busy <= dispatch.CANCEL_NOTICE_CONCURRENCY, f"{busy} threads for 20 notices"
    # 20 notices, 8 at a time, each cut at CANCEL_TIMEOUT: three rounds.
    assert took < 4 * dispatch.CANCEL_TIMEOUT + 3, f"{took:.1f} s"


def test_a_redirect_from_an_agent_is_not_followed(agent):
    """An agent that answers 307 to another address: that address never gets the input."""
    with LoopbackServer(default=Reply(307, {"Location": f"{agent.url}/reasoners/process"}, b"moved")) as redirector:
        nodes.register({"id": "redirector", "base_url": redirector.url, "reasoners": [{"id": "process"}]})
        execution = _submit("redirector")
        assert dispatch.run(execution.id) == "failed"
        execution.refresh_from_db()
        assert execution.error_category == "agent_error" and execution.error_details["http_status"] == 307
        assert len(redirector.requests) == 1
    assert agent.requests == []


def test_an_agents_error_body_is_quoted_back_capped_at_2_kib(node, agent, api):
    agent.default.status, agent.default.body = 500, ("é" * 60_000).encode()
    execution = _submit()
    assert dispatch.run(execution.id) == "failed"
    doc = api.get(f"/api/v1/executions/{execution.id}").json()
    quoted = doc["error_details"]["body"]
    assert 0 < len(quoted.encode()) <= 2048 and set(quoted) == {"é"}
    assert len(doc["error"].encode()) < 2048


def test_a_result_over_the_body_limit_is_a_bad_response(node, agent, settings):
    settings.MAX_BODY_BYTES = 1000
    agent.default.body = {"blob": "x" * 5000}
    execution = _submit()
    assert dispatch.run(execution.id) == "failed"
    execution.refresh_from_db()
    assert execution.error_category == "bad_response" and "larger than 1000 bytes" in execution.error


@pytest.mark.parametrize(
    ("node_id", "reasoner"),
    [("n1", "r?inject=1#frag"), ("n1", "..%2F..%2Fadmin"), ("n1", "../admin"), ("n1", "a.b"), ("n1", "x" * 129),
     ("n:1", "r"), ("n 1", "r"), ("n1\n", "r"), ("", "r"), ("n1", "")],
)
def test_ids_that_could_bend_the_agent_url_are_refused_at_registration(api, agent, node_id, reasoner):
    response = register(api, agent.url, node_id, reasoner)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "bad_request"


@pytest.mark.parametrize("target", ["analyzer.r%3Finject%3D1", "analyzer.a%23frag", "analyzer.a.b",
                                    "ana%20lyzer.process", f"analyzer.{'x' * 129}", "analyzer."])
def test_ids_that_could_bend_the_agent_url_are_refused_at_submit(api, node, agent, target):
    response = api.post(f"/api/v1/execute/async/{target}", {"input": {}}, format="json")
    assert response.status_code == 400, (target, response.content)
    assert response.json()["error_category"] == "bad_request"
    assert not Execution.objects.exists() and agent.requests == []


def test_ids_the_sdk_and_the_demo_agent_use_fit(api, agent):
    for node_id, reasoner in (("analyzer", "process"), ("sdk-node", "summarize"), ("my_agent-2", "deep_research_v2"),
                              ("x" * 128, "y" * 128)):
        assert register(api, agent.url, node_id, reasoner).status_code == 201
    assert nodes.register({"id": "n", "base_url": agent.url, "reasoners": [{"id": "process"}]})[0].id == "n"
