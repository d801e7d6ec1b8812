"""Sync execute: waits for the outcome; 200, 502 on failure, 504 on timeout."""

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from devtools.loopback import LoopbackServer
from devtools.waiting import wait_for
from executions import dispatch, nodes, submission
from executions.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_sync_200_with_result(api, node, agent, completions, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    agent.default.body = {"summary": "done"}
    response = api.post("/api/v1/execute/analyzer.process",
                        {"input": {"document": "x"}, "webhook": {"url": "http://127.0.0.1:9/h"}}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "succeeded" and body["result"] == {"summary": "done"}
    assert body["execution_id"].startswith("exec_") and body["run_id"].startswith("run_")
    assert body["finished_at"] and isinstance(body["duration_ms"], int)
    assert body["webhook_registered"] is True
    assert len(completions) == 1, "a webhook given to the sync call fires too"


def test_sync_reports_a_refused_webhook_as_async_does(api, node, agent, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    agent.default.body = {"summary": "done"}
    done = api.post("/api/v1/execute/analyzer.process",
                    {"input": {}, "webhook": {"url": "http://10.1.1.1/x"}}, format="json")
    assert done.status_code == 200, done.content
    assert done.json()["webhook_registered"] is False and "private" in done.json()["webhook_error"]
    agent.default.status, agent.default.body = 500, {"error": "kaput"}
    failed = api.post("/api/v1/execute/analyzer.process",
                      {"input": {}, "webhook": {"url": "http://10.1.1.1/x"}}, format="json")
    assert failed.status_code == 502
    assert failed.json()["webhook_registered"] is False and "private" in failed.json()["webhook_error"]


def test_sync_502_when_the_agent_fails(api, node, agent):
    agent.default.status, agent.default.body = 500, {"error": "kaput"}
    response = api.post("/api/v1/execute/analyzer.process", {"input": {}}, format="json")
    assert response.status_code == 502
    body = response.json()
    assert body["status"] == "failed" and body["error_category"] == "agent_error"
    assert body["error"] and body["message"] and body["error_details"]["http_status"] == 500


def test_sync_waits_for_the_status_callback(api, node, agent, settings):
    agent.default.status, agent.default.body = 202, {"status": "processing"}

    def callback_later():
        try:
            row = wait_for(lambda: Execution.objects.filter(status="running").first(), timeout=5,
                           interval=0.02, what="the execution to run")
            # Deliberately late: the outcome must arrive while the sync call is waiting for it.
            time.sleep(0.1)
            api.post(f"/api/v1/executions/{row.id}/status", {"status": "succeeded", "result": 7}, format="json")
        finally:
            connection.close()

    thread = threading.Thread(target=callback_later)
    thread.start()
    response = api.post("/api/v1/execute/analyzer.process", {"input": {}}, format="json")
    thread.join()
    assert response.status_code == 200 and response.json()["result"] == 7


def test_sync_504_when_no_outcome_in_time(api, node, agent, settings):
    settings.AGENT_CALL_TIMEOUT = 0.5
    agent.default.status, agent.default.body = 202, {"status": "processing"}
    response = api.post("/api/v1/execute/analyzer.process", {"input": {}}, format="json")
    assert response.status_code == 504
    assert response.json()["error"] == "timeout" and response.json()["status"] == "running"


def test_sync_at_the_nodes_cap_waits_for_a_call_thread(api, node, agent, settings):
    """The web process never holds more of a node's calls than its cap: the execution waits its turn."""
    from executions import dispatch, submission

    settings.AGENT_MAX_CALLS_PER_NODE = 1
    agent.default.delay, agent.default.body = 0.5, {"ok": True}
    first, _ = submission.submit(submission.Request(target="analyzer.process", input={"n": 1}), enqueue=False)
    assert dispatch.take(first.id) == 1  # a worker's call thread holds the node's one place
    response = api.post("/api/v1/execute/analyzer.process", {"input": {"n": 2}}, format="json")
    assert response.status_code == 200 and response.json()["result"] == {"ok": True}
    # The call thread took it once its own call had ended: one at a time, in order.
    assert [r.json()["n"] for r in agent.requests] == [1, 2]
    assert agent.requests[1].at - agent.requests[0].at >= 0.5


def test_a_sync_caller_that_goes_away_mid_call_does_not_free_the_call_thread_it_still_holds(node, agent, monkeypatch):
    """A disconnect cancels the waiting coroutine, not the call: its thread stays busy till the agent answers.

    Counting the thread free at the disconnect let the next sync call wait in the
    pool's queue behind the hung call (up to AGENT_CALL_TIMEOUT) instead of going
    to a worker after HAND_OVER_AFTER.
    """
    monkeypatch.setattr(submission, "_calls_free", threading.BoundedSemaphore(1))
    monkeypatch.setattr(submission, "_call_pool", ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-call"))
    handed_over = []
    monkeypatch.setattr(dispatch, "enqueue", handed_over.append)

    def _submit(target):
        return submission.submit(submission.Request(target=target, input={}), enqueue=False)[0]

    with LoopbackServer.agent() as hung:
        hung.default.delay = 5
        nodes.register({"id": "hung", "base_url": hung.url, "version": "1", "reasoners": [{"id": "process"}]})
        stuck, healthy = _submit("hung.process"), _submit("analyzer.process")

        async def scenario():
            gone = asyncio.create_task(submission.wait_for_outcome(stuck.id, True, time.monotonic() + 30))
            while not hung.requests:
                await asyncio.sleep(0.02)
            gone.cancel()  # the sync caller disconnected: Django cancels its view
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            began = time.monotonic()
            waiting = asyncio.create_task(submission.wait_for_outcome(healthy.id, True, time.monotonic() + 30))
            while not handed_over and time.monotonic() - began < 4:
                await asyncio.sleep(0.02)
            took = time.monotonic() - began
            waiting.cancel()  # no worker here to take it
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            return took

        took = asyncio.run(scenario())
        assert handed_over == [healthy.id], "the one call thread is still busy: the call goes to a worker"
        assert took < 3
        assert not agent.requests
    submission._call_pool.shutdown(wait=True)


def test_a_sync_call_whose_hand_over_the_broker_refuses_is_left_to_the_sweeper_not_a_500(api, node, agent, settings,
                                                                                         monkeypatch):
    """The execution is stored: a broker that fails the hand-over leaves it waiting, as a lost wake-up does.

    With the database as the broker, the hand-over's error escaped the view: a 500 for
    an execution that the sweeper's wake-up (`dispatch.wake_waiting`) still sends to
    its agent, and that a client retrying the 500 would submit a second time.
    """
    from agentfield_site.lib import tasks

    settings.AGENT_CALL_TIMEOUT = 1.5
    monkeypatch.setattr(submission, "_calls_free", threading.BoundedSemaphore(1))
    submission._calls_free.acquire()  # the web process's one call thread is busy

    def broker_down(*args, **kwargs):
        raise ConnectionError("the broker is down")

    monkeypatch.setattr(tasks, "enqueue", broker_down)
    response = api.post("/api/v1/execute/analyzer.process", {"input": {}}, format="json")
    assert response.status_code == 504, response.content
    [row] = Execution.objects.all()
    assert row.status == "queued" and row.dispatch_state == Execution.Dispatch.QUEUED
    assert response.json()["execution_id"] == row.id


def test_a_handed_over_sync_call_is_still_made_here_once_a_call_thread_frees(node, agent, monkeypatch):
    """No worker took it (none runs, or all are busy): the web process calls it as soon as it can."""
    monkeypatch.setattr(submission, "_calls_free", threading.BoundedSemaphore(1))
    handed_over = []
    monkeypatch.setattr(dispatch, "enqueue", handed_over.append)
    agent.default.body = {"answer": 7}
    execution = submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)[0]
    submission._calls_free.acquire()  # the one call thread is busy

    async def scenario():
        waiting = asyncio.create_task(submission.wait_for_outcome(execution.id, True, time.monotonic() + 30))
        while not handed_over:
            await asyncio.sleep(0.02)
        submission._calls_free.release()  # its call ended
        return await asyncio.wait_for(waiting, timeout=10)

    done = asyncio.run(scenario())
    assert handed_over == [execution.id]
    assert done.status == "succeeded" and done.result == {"answer": 7}
    assert len(agent.requests) == 1
