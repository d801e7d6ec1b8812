"""A real HTTP collector on 127.0.0.1 for forwarder tests: records every request it gets."""

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Collector:
    """A ThreadingHTTPServer that records requests and answers `status` (changeable at any time).

    `first` answers are used, in order, before `status`; `delay` seconds of sleep
    before answering simulate a slow collector.
    """

    def __init__(
        self, status: int = 200, delay: float = 0.0, first: list[int] | None = None
    ) -> None:
        self.status = status
        self.first = list(first or [])
        self.delay = delay
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the forwarder's session expects

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender died mid-request (a SIGKILLed worker): nothing arrived.
                    self.close_connection = True
                    return
                if collector.delay:
                    time.sleep(collector.delay)
                with collector.lock:
                    status = collector.first.pop(0) if collector.first else collector.status
                    collector.requests.append(
                        {
                            "headers": dict(self.headers.items()),
                            "body": body,
                            "status": status,
                            "at": time.time(),
                        }
                    )
                reply = b'{"ok":true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/collect"

    def __enter__(self) -> "Collector":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[dict]:
        """Envelopes the collector answered 2xx to, in arrival order."""
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests if 200 <= r["status"] < 300]

    def accepted_ids(self) -> list[int]:
        return [e["event_id"] for envelope in self.accepted() for e in envelope["events"]]

    def where(self, predicate: Callable[[dict], bool]) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if predicate(r)]
