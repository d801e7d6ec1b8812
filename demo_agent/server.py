"""A small agent that speaks the AgentField agent protocol the way the SDK's agents do.

It registers as a node with one reasoner, `process`, heartbeats every 2 s, and, when
the control plane calls it with `X-Execution-ID`, answers `202 processing` at once,
then reports progress, the result through the status callback, and its logs.
Without `X-Execution-ID` it answers the result directly with `200`.
Standard library plus `requests`, so `make run` needs nothing else.
"""

import json
import logging
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

log = logging.getLogger("demo_agent")

VERSION = "0.1.0"
REASONERS = [
    {
        "id": "process",
        "input_schema": {
            "type": "object",
            "properties": {"document": {"type": "string"}},
            "required": ["document"],
        },
        "output_schema": {
            "type": "object",
            "properties": {
                "summary": {"type": "string"},
                "words": {"type": "integer"},
                "document": {"type": "string"},
            },
        },
        "tags": ["demo"],
    }
]


def process(payload: dict[str, Any]) -> dict[str, Any]:
    """The demo reasoner: a word count and a short summary of `document`."""
    document = str(payload.get("document", ""))
    words = document.split()
    summary = " ".join(words[:12]) + (" ..." if len(words) > 12 else "")
    return {"summary": summary, "words": len(words), "document": document}


def _now() -> str:
    return datetime.now(UTC).isoformat()


# How long a result is retried while the control plane is unreachable (a restart,
# a deploy): the result is the one thing an agent must not drop.
FINISH_PATIENCE_SECONDS = 300.0


class ControlPlane:
    """The calls an agent makes to the control plane, over keep-alive sessions."""

    def __init__(self, server: str, node_id: str, api_key: str = "") -> None:
        self.api = server.rstrip("/") + "/api/v1"
        self.node_id = node_id
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["X-API-Key"] = api_key
        # One session per thread: requests.Session is not safe to share, and a
        # shared one behind a lock would queue every callback behind the slowest.
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers.update(self.headers)
        return self._local.session

    def post(self, path: str, body: dict[str, Any], timeout: float = 10.0) -> requests.Response | None:
        try:
            return self.session.post(self.api + path, data=json.dumps(body), timeout=timeout)
        except requests.RequestException as exc:
            log.warning("POST %s failed: %s", path, exc)
            return None

    def post_until_answered(self, path: str, body: dict[str, Any], patience: float) -> None:
        """POST until the control plane answers (not 5xx), with capped backoff, for `patience` s."""
        deadline = time.monotonic() + patience
        delay = 0.5
        while True:
            response = self.post(path, body, timeout=30.0)
            if response is not None and response.status_code < 500:
                return
            if time.monotonic() + delay > deadline:
                log.error("giving up on POST %s after %.0f s", path, patience)
                return
            time.sleep(delay)
            delay = min(delay * 2, 8.0)

    def register(self, base_url: str) -> bool:
        response = self.post(
            "/nodes/register",
            {
                "id": self.node_id,
                "team_id": "default",
                "base_url": base_url,
                "version": VERSION,
                "reasoners": REASONERS,
                "skills": [],
                "lifecycle_status": "ready",
                "communication_config": {"protocols": ["http"], "heartbeat_interval": "2s"},
                "health_status": "healthy",
                "last_heartbeat": _now(),
                "registered_at": _now(),
                "metadata": {"deployment": {"environment": "development", "platform": "python"}, "custom": {}},
            },
        )
        return response is not None and response.status_code in (200, 201)

    def heartbeat(self) -> int | None:
        response = self.post(
            f"/nodes/{self.node_id}/heartbeat",
            {"status": "ready", "timestamp": _now(), "version": VERSION, "instance_id": ""},
            timeout=5.0,
        )
        return None if response is None else response.status_code

    def report(self, execution_id: str, run_id: str, status: str, **extra: Any) -> None:
        self.post(
            "/workflow/executions/events",
            {
                "execution_id": execution_id,
                "workflow_id": run_id,
                "run_id": run_id,
                "reasoner_id": "process",
                "type": "process",
                "agent_node_id": self.node_id,
                "status": status,
                **extra,
            },
            timeout=5.0,
        )

    def finish(self, execution_id: str, body: dict[str, Any]) -> None:
        """The status callback, retried through a control-plane restart (it is idempotent)."""
        self.post_until_answered(f"/executions/{execution_id}/status", body, FINISH_PATIENCE_SECONDS)

    def logs(self, execution_id: str, entries: list[dict[str, Any]]) -> None:
        self.post_until_answered(f"/executions/{execution_id}/logs", {"entries": entries}, 30.0)


def run_execution(cp: ControlPlane, execution_id: str, run_id: str, payload: dict[str, Any]) -> None:
    """What the SDK does after answering 202: progress, status callback, logs, last event."""
    started = time.monotonic()
    cp.report(execution_id, run_id, "running", input_data=payload)
    try:
        result = process(payload)
        body = {
            "status": "succeeded",
            "result": result,
            "duration_ms": int((time.monotonic() - started) * 1000),
            "completed_at": _now(),
            "execution_id": execution_id,
            "reasoner": "process",
        }
    except Exception as exc:  # noqa: BLE001 - any reasoner failure is reported, as the SDK does
        body = {
            "status": "failed",
            "error": str(exc),
            "duration_ms": int((time.monotonic() - started) * 1000),
            "completed_at": _now(),
            "execution_id": execution_id,
            "reasoner": "process",
        }
    cp.finish(execution_id, body)
    cp.logs(
        execution_id,
        [{"level": "INFO", "message": f"process finished: {body['status']}", "timestamp": _now(),
          "event_type": "reasoner.completed"}],
    )
    cp.report(execution_id, run_id, body["status"], duration_ms=body["duration_ms"])


class Handler(BaseHTTPRequestHandler):
    server_version = "demo-agent/" + VERSION
    protocol_version = "HTTP/1.1"
    control_plane: ControlPlane

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug(fmt, *args)

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw or b"{}")

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/health", ""):
            self._reply(200, {"status": "healthy", "node_id": self.control_plane.node_id})
        else:
            self._reply(404, {"error": "not_found", "message": f"No route {self.path}."})

    def do_POST(self) -> None:
        try:
            payload = self._body()
        except ValueError:
            self._reply(400, {"error": "bad_request", "message": "The body is not JSON."})
            return
        if self.path.startswith("/_internal/executions/") and self.path.endswith("/cancel"):
            self._reply(200, {"status": "cancel_requested"})
            return
        if self.path != "/reasoners/process":
            self._reply(404, {"error": "not_found", "message": f"No reasoner at {self.path}."})
            return
        if not isinstance(payload, dict):
            self._reply(422, {"detail": "The input must be an object."})
            return
        execution_id = self.headers.get("X-Execution-ID")
        if not execution_id:
            self._reply(200, process(payload))
            return
        run_id = self.headers.get("X-Run-ID") or self.headers.get("X-Workflow-ID") or ""
        self._reply(202, {"status": "processing", "execution_id": execution_id})
        threading.Thread(
            target=run_execution, args=(self.control_plane, execution_id, run_id, payload), daemon=True
        ).start()


def heartbeat_loop(cp: ControlPlane, base_url: str, stop: threading.Event, interval: float = 2.0) -> None:
    """Heartbeat every `interval`; a control plane that forgot us (404) gets a new registration."""
    while not stop.wait(interval):
        if cp.heartbeat() == 404:
            cp.register(base_url)


def serve(port: int, node_id: str, server: str, api_key: str = "", host: str = "127.0.0.1") -> None:
    """Serve until interrupted; register (retrying until the control plane is up), heartbeat.

    `port` 0 takes any free port; the registration carries the port really bound.
    """
    cp = ControlPlane(server, node_id, api_key)
    handler = type("BoundHandler", (Handler,), {"control_plane": cp})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    # The bound port, not the requested one: port 0 asks the kernel for any free port.
    port = httpd.server_address[1]
    base_url = f"http://localhost:{port}" if host == "0.0.0.0" else f"http://{host}:{port}"
    log.info("listening on %s", base_url)
    stop = threading.Event()

    def start() -> None:
        while not stop.is_set() and not cp.register(base_url):
            stop.wait(0.5)
        log.info("registered %s at %s with %s", node_id, base_url, server)
        heartbeat_loop(cp, base_url, stop)

    threading.Thread(target=start, name="register-heartbeat", daemon=True).start()
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        cp.post(f"/nodes/{node_id}/shutdown", {}, timeout=2.0)
        httpd.server_close()
