"""The node list under daphne: every node, sent as it is rendered, never the whole list in memory at once."""

import time

import pytest
import requests
from django.db import connection

pytestmark = pytest.mark.processes

NODES = 100
METADATA_BYTES = 240_000  # under NODE_MAX_DESCRIPTION_BYTES (256 KiB)


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_list_of_large_nodes_is_whole_and_streamed(proc_env):
    web = proc_env.daphne()
    with requests.Session() as http:
        for n in range(NODES):
            body = {"id": f"big-{n:03}", "base_url": "http://127.0.0.1:9", "metadata": {"blob": "m" * METADATA_BYTES}}
            assert http.post(f"{web.url}/api/v1/nodes/register", json=body, timeout=30).status_code == 201
        before = _peak_rss_mib(web.popen.pid)

        listed = http.get(f"{web.url}/api/v1/nodes", timeout=60)
        assert listed.status_code == 200 and listed.headers["Content-Type"] == "application/json"
        document = listed.json()
        grown = _peak_rss_mib(web.popen.pid) - before

    assert document["count"] == NODES
    assert [node["id"] for node in document["nodes"]] == [f"big-{n:03}" for n in range(NODES)]
    assert all(len(node["metadata"]["blob"]) == METADATA_BYTES for node in document["nodes"])
    # The list is 24 MB; rendered whole it took four to five times that in daphne.
    assert grown < 40, f"daphne's peak memory grew by {grown:.0f} MiB for a 24 MB list"


def test_a_node_described_in_more_than_the_limit_is_refused(proc_env):
    web = proc_env.daphne({"NODE_MAX_DESCRIPTION_BYTES": "1000"})
    body = {"id": "wordy", "base_url": "http://127.0.0.1:9", "metadata": {"blob": "m" * 1000}}
    refused = requests.post(f"{web.url}/api/v1/nodes/register", json=body, timeout=10)
    assert refused.status_code == 413 and refused.json()["error"] == "payload_too_large", refused.text
    assert "NODE_MAX_DESCRIPTION_BYTES" in refused.json()["message"]
    assert requests.get(f"{web.url}/api/v1/nodes", timeout=10).json() == {"nodes": [], "count": 0}


@pytest.mark.skipif(connection.vendor != "sqlite", reason="a row PostgreSQL's types would refuse")
def test_a_list_that_fails_after_it_started_is_cut_off_not_left_hanging(proc_env):
    # The 200 had gone out; daphne neither ended the chunked body nor closed the
    # connection, and the client waited for ever.
    web = proc_env.daphne()
    with requests.Session() as http:
        for n in range(45):
            body = {"id": f"n-{n:03}", "base_url": "http://127.0.0.1:9"}
            assert http.post(f"{web.url}/api/v1/nodes/register", json=body, timeout=30).status_code == 201
    with connection.cursor() as cursor:  # a row of the third group that cannot be read back
        cursor.execute("UPDATE executions_agentnode SET last_heartbeat = '2020-13-45 00:00:00' WHERE id = 'n-041'")
    started = time.monotonic()
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{web.url}/api/v1/nodes", timeout=20).json()
    assert time.monotonic() - started < 15, "cut off, not left to the client's timeout"
