"""A real HTTP agent on loopback whose answers a test scripts: status, body, delay."""

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackAgent:
    """Records every request; answers with `status`/`body` after `delay` seconds."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.body: Any = {"ok": True}
        self.delay = 0.0
        # Called with each request before answering (e.g. to post a callback first).
        self.on_request: Callable[[dict[str, Any]], None] | None = None
        agent = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                request = {"path": self.path, "headers": dict(self.headers), "body": raw}
                agent.requests.append(request)
                if agent.on_request:
                    agent.on_request(request)
                if agent.delay:
                    time.sleep(agent.delay)
                data = agent.body if isinstance(agent.body, bytes) else json.dumps(agent.body).encode()
                try:
                    self.send_response(agent.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller gave up (timed out, or its process was killed)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
