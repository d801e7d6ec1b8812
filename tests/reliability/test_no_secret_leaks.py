"""No secret leaves through the API, the streams, the outbound bodies or the logs of real processes.

Every kind of secret the control plane holds is created: an API key (the
environment's and one made in the admin), an execution's webhook secret, a
subscription's secret (and its rotated successor), the observability collector's
secret, and the custom headers of a subscription and of a webhook (write-only: their
receivers' credentials). Deliveries fail, dead-letter and are redriven; the collector fails and its
dead letters are redriven. Then every read endpoint is walked, the SSE replay of the
whole log is read, and the logs of daphne, the qcluster and the agent (at DEBUG)
are searched. The only responses allowed to carry a secret are the subscription's
create and rotate answers, which show it once by contract.
"""

import asyncio
import json

import pytest
import requests

from agentfield_site.models import ApiKey
from devtools.loopback import LoopbackServer, Reply
from devtools.sse import SocketSse, events_only
from devtools.waiting import wait_for
from webhooks.models import Delivery

pytestmark = pytest.mark.processes

ENV_KEY = "afk_env_" + "Zr8fQ2LmN7xVw3Kp9TcYb"
EXECUTION_SECRET = "whsec_" + "ZXhlY3V0aW9uLXdlYmhvb2stc2VjcmV0LXNvYWsh"
COLLECTOR_SECRET = "whsec_" + "Y29sbGVjdG9yLXNlY3JldC1uZXZlci1zaG93bg=="
OBS = "/api/v1/settings/observability-webhook"
SUB_HEADER = "Bearer " + "c3Vic2NyaXB0aW9uLWhlYWRlci10b2tlbg"
WEBHOOK_HEADER = "tok_" + "d2ViaG9vay1oZWFkZXItdG9rZW4"


def _get(session: requests.Session, url: str, **params) -> requests.Response:
    response = session.get(url, params=params, timeout=10)
    assert response.status_code == 200, (url, response.status_code, response.text)
    return response


def test_no_secret_in_any_response_stream_body_or_log(proc_env):
    admin_key = ApiKey.create("leak-check", ApiKey.Scope.ADMIN)[1]
    debug = {"LOG_LEVEL": "DEBUG", "API_KEYS": ENV_KEY}
    web = proc_env.daphne(debug)
    worker = proc_env.worker(debug)
    agent = proc_env.demo_agent(web.url, extra_env=debug)
    api = requests.Session()
    api.headers["X-API-Key"] = admin_key
    other = requests.Session()
    other.headers["Authorization"] = f"Bearer {ENV_KEY}"
    responses: list[tuple[str, str]] = []  # (where, body) that must carry no secret

    def keep(where: str, response: requests.Response) -> requests.Response:
        responses.append((where, response.text))
        return response

    wait_for(lambda: api.get(f"{web.url}/api/v1/nodes/analyzer", timeout=2).ok, timeout=30,
             what=f"demo agent registration\n{agent.log()}")
    # Keys are enforced: a request without one is refused without echoing anything.
    assert requests.get(f"{web.url}/api/v1/executions", timeout=5).status_code == 401

    with LoopbackServer(default=Reply(500)) as receiver, LoopbackServer() as sub_receiver, LoopbackServer.collector(status=500) as collector:
        keep("observability POST", response := api.post(
            f"{web.url}{OBS}", json={"url": collector.url, "secret": COLLECTOR_SECRET}, timeout=10))
        assert response.status_code == 200 and response.json()["config"]["has_secret"] is True

        created = api.post(f"{web.url}/api/v1/webhooks/subscriptions",
                           json={"url": sub_receiver.url, "event_types": ["execution.*"],
                                 "headers": {"Authorization": SUB_HEADER}}, timeout=10)
        assert created.status_code == 201, created.text
        subscription = created.json()
        assert subscription["headers"] == {"Authorization": "***"}
        rotated = api.post(f"{web.url}/api/v1/webhooks/subscriptions/{subscription['id']}/rotate-secret", timeout=10)
        assert rotated.status_code == 200, rotated.text
        sub_secrets = {subscription["secret"], rotated.json()["secret"]}

        submitted = other.post(
            f"{web.url}/api/v1/execute/async/analyzer.process",
            json={"input": {"document": "secret keeping"},
                  "webhook": {"url": receiver.url, "secret": EXECUTION_SECRET,
                              "headers": {"X-Receiver-Token": WEBHOOK_HEADER}}},
            timeout=10,
        )
        keep("execute async", submitted)
        assert submitted.status_code == 202 and submitted.json()["webhook_registered"], submitted.text
        execution_id = submitted.json()["execution_id"]

        # The receiver fails every attempt: the completion webhook is dead-lettered.
        dlq = wait_for(lambda: (d := _get(api, f"{web.url}/api/v1/webhooks/dlq").json())["total_count"] and d,
                       timeout=60, what=f"the dead-lettered completion webhook\n{worker.log()[-3000:]}")
        responses.append(("webhooks dlq", json.dumps(dlq)))
        # The collector fails too: its batches land in the forwarder's dead letter queue.
        wait_for(lambda: _get(api, f"{web.url}{OBS}/dlq").json()["total_count"], timeout=60,
                 what="collector dead letters")
        for where in (f"{OBS}/dlq", f"{OBS}/status", OBS):
            keep(where, _get(api, f"{web.url}{where}"))

        receiver.default = Reply(200)
        collector.default.status = 200
        keep("webhook redrive", api.post(f"{web.url}/api/v1/webhooks/dlq/redrive", json={"all": True}, timeout=10))
        keep("observability redrive", api.post(f"{web.url}{OBS}/redrive", timeout=30))
        keep("webhook retry", api.post(f"{web.url}/api/v1/executions/{execution_id}/webhook/retry", timeout=10))
        wait_for(lambda: collector.accepted() and Delivery.objects.filter(
            kind=Delivery.Kind.COMPLETION, execution_id=execution_id, status=Delivery.Status.DELIVERED).exists(),
            timeout=30, what="deliveries after the fixes")
        wait_for(lambda: sub_receiver.requests, timeout=30, what="a subscription delivery")

        for path, params in [
            (f"/api/v1/executions/{execution_id}", {}),
            ("/api/v1/executions", {}),
            ("/api/v1/executions", {"status": "succeeded"}),
            ("/api/v1/webhooks/subscriptions", {}),
            (f"/api/v1/webhooks/subscriptions/{subscription['id']}", {}),
            ("/api/v1/webhooks/dlq", {}),
            (OBS, {}),
            (f"{OBS}/status", {}),
            (f"{OBS}/dlq", {}),
            ("/api/v1/nodes", {}),
            ("/api/v1/nodes/analyzer", {}),
        ]:
            keep(f"GET {path}", _get(api, f"{web.url}{path}", **params))
        keep("batch-status", api.post(f"{web.url}/api/v1/executions/batch-status",
                                      json={"execution_ids": [execution_id]}, timeout=10))

        async def replay() -> str:
            # EventSource passes the key in the query string: that must not reach a log either.
            sse = await SocketSse(f"{web.url}/api/ui/v1/executions/events?api_key={admin_key}",
                                  {"Last-Event-ID": "0"}).start()
            frames = await sse.read_until(
                lambda fs: any(f.event == "webhook.delivered" for f in events_only(fs)), timeout=20)
            await sse.close()
            return "\n".join(f.data or "" for f in frames)

        responses.append(("SSE replay", asyncio.run(replay())))
        outbound = [("receiver body", r.body.decode()) for r in receiver.requests + sub_receiver.requests]
        outbound += [("collector body", r.body.decode()) for r in collector.requests]

    # The headers reach their receivers, and nothing else.
    assert sub_receiver.requests[0].headers["Authorization"] == SUB_HEADER
    assert receiver.requests[0].headers["X-Receiver-Token"] == WEBHOOK_HEADER
    secrets = {EXECUTION_SECRET, COLLECTOR_SECRET, admin_key, ENV_KEY, SUB_HEADER, WEBHOOK_HEADER, *sub_secrets}
    for where, text in responses + outbound:
        leaked = [s[:12] + "…" for s in secrets if s in text]
        assert not leaked, f"{where} carries {leaked}"
    # The one place a subscription secret may appear: its create and rotate answers.
    assert subscription["secret"] in created.text and rotated.json()["secret"] in rotated.text
    assert SUB_HEADER not in created.text

    for proc in proc_env.procs:
        log = proc.log()
        assert log, f"{proc.name} wrote no log at DEBUG"
        leaked = [s[:12] + "…" for s in secrets if s in log]
        assert not leaked, f"{proc.name}'s log carries {leaked}"
