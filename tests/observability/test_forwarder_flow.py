"""The README flow with real processes: configure over HTTP, run executions, collector fails, redrive."""

import json

import pytest
import requests
import standardwebhooks

from devtools.loopback import LoopbackServer
from devtools.waiting import wait_for
from observability.models import PlatformEvent

SECRET = "whsec_" + "C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
OBS = "/api/v1/settings/observability-webhook"


def run_execution(base: str, text: str) -> str:
    response = requests.post(
        f"{base}/api/v1/execute/async/analyzer.process",
        json={"input": {"document": text}},
        timeout=5,
    )
    assert response.status_code == 202, response.text
    return response.json()["execution_id"]


def finished(base: str, execution_id: str) -> bool:
    doc = requests.get(f"{base}/api/v1/executions/{execution_id}", timeout=5).json()
    return doc["status"] in ("succeeded", "failed", "cancelled", "timeout")


def terminal_ids(collector: LoopbackServer) -> set[str]:
    return {
        e["data"].get("execution_id")
        for envelope in collector.accepted()
        for e in envelope["events"]
        if e["event_type"] == "execution.completed"
    }


@pytest.mark.processes
def test_configure_forward_fail_and_redrive(proc_env):
    web = proc_env.daphne()
    proc_env.worker({"OBSERVABILITY_FLUSH_INTERVAL": "0.3"})
    with LoopbackServer.collector() as collector:
        response = requests.post(
            f"{web.url}{OBS}", json={"url": collector.url, "secret": SECRET}, timeout=5
        )
        assert response.status_code == 200, response.text
        assert response.json()["config"]["has_secret"] is True

        agent = proc_env.demo_agent(web.url)
        wait_for(
            lambda: requests.get(f"{web.url}/api/v1/nodes/analyzer", timeout=2).ok,
            timeout=20,
            what=f"demo agent registration\n{agent.log()}",
        )
        first = {run_execution(web.url, f"document {i}") for i in range(3)}
        wait_for(
            lambda: first <= terminal_ids(collector),
            timeout=30,
            what="completed executions at the collector",
        )

        for request in collector.where(lambda r: True):
            standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
            assert json.loads(request.body)["event_count"] <= 10
        ids = collector.accepted_ids()
        assert len(ids) == len(set(ids)), "no event twice without a crash"
        logged = set(
            PlatformEvent.objects.filter(execution_id__in=first).values_list("id", flat=True)
        )
        wait_for(
            lambda: logged <= set(collector.accepted_ids()),
            timeout=10,
            what="every event of those executions",
        )

        # The collector breaks: after 3 attempts the events land in the DLQ.
        collector.default.status = 500
        failed_before = len(collector.requests)
        second = {run_execution(web.url, f"later {i}") for i in range(2)}
        for execution_id in second:
            wait_for(
                lambda eid=execution_id: finished(web.url, eid),
                timeout=30,
                what="the execution to finish",
            )
        second_events = set(
            PlatformEvent.objects.filter(execution_id__in=second).values_list("id", flat=True)
        )
        dlq = wait_for(
            lambda: (
                (d := requests.get(f"{web.url}{OBS}/dlq", params={"limit": 1000}, timeout=5).json())
                and second_events <= {e["event_id"] for e in d["entries"]}
                and d
            ),
            timeout=30,
            what="every event of the executions run while the collector failed in the DLQ",
        )
        assert all(e["retry_count"] == 3 for e in dlq["entries"])
        dead = {e["event_id"] for e in dlq["entries"]}
        attempts: dict[str, int] = {}
        for request in collector.requests[failed_before:]:
            if {e["event_id"] for e in json.loads(request.body)["events"]} <= dead:
                attempts[request.headers["webhook-id"]] = (
                    attempts.get(request.headers["webhook-id"], 0) + 1
                )
        assert attempts and set(attempts.values()) == {3}, "three attempts per dead-lettered batch"

        # Fixed: redrive delivers every entry and empties the queue.
        collector.default.status = 200
        result = requests.post(f"{web.url}{OBS}/redrive", timeout=30).json()
        assert result["success"] is True and result["failed"] == 0
        assert result["processed"] == dlq["total_count"]
        assert requests.get(f"{web.url}{OBS}/dlq", timeout=5).json()["total_count"] == 0
        assert second <= terminal_ids(collector)
        status = requests.get(f"{web.url}{OBS}/status", timeout=5).json()
        assert status["events_forwarded"] >= len(logged)
        assert status["webhook_url"] == collector.url
