"""`manage.py listen`: a development receiver for webhooks and collector batches.

Like `stripe listen` or `svix listen`: it prints each request it receives (method,
path, the signature headers and whether they verify with --secret, the body
pretty-printed) and answers 200, or fails on purpose (--fail) to show retries and
the dead letter queue. For a laptop, not production: it trusts whatever connects.
"""

import argparse
import json
import select
import socket
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentfield_site.lib import signing

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "X-AgentField-Signature")
# How long --fail timeout holds a request at most, waiting for the sender to give up.
HOLD_SECONDS = 300.0


def failure_mode(value: str) -> str | int:
    """`timeout`, or an HTTP status from 400 to 599 (500, 410, 429, ...)."""
    if value == "timeout":
        return value
    try:
        status = int(value)
    except ValueError:
        status = 0
    if not 400 <= status <= 599:
        raise argparse.ArgumentTypeError(f"--fail takes timeout or a status from 400 to 599, not {value!r}")
    return status


class Command(BaseCommand):
    help = "Receive webhooks on a local port and print them, verifying signatures with --secret."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=9000, help="0: any free port (default 9000)")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--secret", default="", help="the whsec_... secret to verify signatures with")
        parser.add_argument(
            "--fail",
            type=failure_mode,
            default=None,
            metavar="500|410|timeout",
            help="answer every request with this status (410: dead at once), or never answer (timeout)",
        )

    def handle(self, *args, port: int, host: str, secret: str, fail: str | int | None, **options) -> None:
        command = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _receive(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with lock:
                    command.show(self.command, self.path, self.headers, body, secret)
                if fail == "timeout":
                    command.hold(self.connection)
                    command.say("<- no answer (timeout)\n")
                    self.close_connection = True
                    return
                status = fail or 200
                reply = json.dumps({"received": status < 400}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                command.say(f"<- {status}\n")

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = _receive

            def log_message(self, *args) -> None:
                pass  # `show` prints each request; the default access log would repeat it

        try:
            server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        server.daemon_threads = True
        url = f"http://{host}:{server.server_address[1]}/"
        mode = f", answering {fail}" if fail else ""
        check = "verifying signatures" if secret else "not verifying signatures (no --secret)"
        self.say(f"Listening on {url} ({check}{mode}). Ctrl-C stops.\n")
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            self.say("Stopped.\n")
        finally:
            server.server_close()

    def say(self, text: str, style=None) -> None:
        self.stdout.write(style(text) if style else text, ending="")
        self.stdout.flush()

    def show(self, method: str, path: str, headers, body: bytes, secret: str) -> None:
        """Print one request: the line, the signature headers and verdict, the body."""
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        self.say(f"-> {method} {path}  {stamp}\n", self.style.HTTP_INFO)
        present = {name: headers[name] for name in SIGNATURE_HEADERS if headers.get(name)}
        for name, value in present.items():
            self.say(f"   {name}: {value}\n")
        if not secret:
            verdict, style = "not checked (pass --secret whsec_... to verify)", self.style.WARNING
        elif not present.keys() - {"webhook-id", "webhook-timestamp"}:
            verdict, style = "MISSING (the request is unsigned)", self.style.ERROR
        else:
            try:
                signing.verify(body, dict(headers.items()), secret)
                verdict, style = "verified", self.style.SUCCESS
            except signing.SignatureError as exc:
                verdict, style = f"INVALID ({exc})", self.style.ERROR
        self.say(f"   signature: {verdict}\n", style)
        self.say(pretty(body) + "\n")

    def hold(self, connection, limit: float = HOLD_SECONDS) -> None:
        """Keep the request unanswered until the sender hangs up (its timeout) or `limit` passes."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            readable, _, _ = select.select([connection], [], [], 0.5)
            if readable:
                if not connection.recv(1, socket.MSG_PEEK):  # b"" once the sender closed
                    return
                time.sleep(0.5)  # a pipelined request waits its turn; it is not a hang-up


def pretty(body: bytes) -> str:
    """JSON indented; anything else as text."""
    if not body:
        return "(empty body)"
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body.decode("utf-8", errors="replace")
