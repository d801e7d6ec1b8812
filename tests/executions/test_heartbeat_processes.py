"""Under daphne, beats answered from memory reach the database, and a node deleted meanwhile is a 404 again."""

import time

import pytest
import requests

from agentfield_site.models import ApiKey
from devtools.waiting import wait_for
from executions.models import AgentNode
from tests.executions.test_node_endpoints import SDK_BODY

pytestmark = pytest.mark.processes


def test_beats_from_memory_are_written_and_a_deleted_node_is_refused_again(proc_env):
    _, raw = ApiKey.create("beating", ApiKey.Scope.AGENT)
    web = proc_env.daphne()
    http = requests.Session()
    http.headers.update({"X-API-Key": raw})
    assert http.post(f"{web.url}/api/v1/nodes/register", json=SDK_BODY, timeout=10).status_code in (200, 201)

    def beat() -> int:
        return http.post(f"{web.url}/api/v1/nodes/writer/heartbeat", json={"status": "ready"}, timeout=10).status_code

    # The first beat is written at once; those after it are answered from memory and written in batches.
    sent_at = []
    for _ in range(12):
        assert beat() == 200
        sent_at.append(time.time())
        time.sleep(0.1)
    later = sent_at[-3]
    wait_for(lambda: AgentNode.objects.get(pk="writer").last_heartbeat.timestamp() >= later - 0.5, timeout=5,
             interval=0.05, what="the queued beats written")
    assert AgentNode.objects.get(pk="writer").last_heartbeat.timestamp() <= sent_at[-1] + 0.01  # never ahead

    AgentNode.objects.filter(pk="writer").delete()
    # A beat already answered from memory may be acknowledged once more; once its batch
    # finds the node gone, the process forgets it and the node is unknown again.
    codes = []
    for _ in range(20):
        codes.append(beat())
        if codes[-1] == 404:
            break
        time.sleep(0.1)
    assert codes[-1] == 404, codes
    assert codes.count(200) <= 5, codes
    assert not AgentNode.objects.filter(pk="writer").exists()
