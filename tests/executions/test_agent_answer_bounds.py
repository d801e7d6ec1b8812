"""An agent's answer that never ends, or ends early, fails its execution once and frees its call thread.

A raw socket agent sends what no well-behaved server would: a 200 whose body is
cut off, a body that stalls, or an answer trickled a byte at a time (each byte
within the read timeout, so only a deadline for the whole call ends it). Before,
the first two escaped `dispatch.call` as exceptions: the execution stayed in
flight until its lease lapsed, and was sent to the agent again, and again. The
third held a call thread for as long as the agent liked, past the lease, and the
execution went out a second time beside the first.
"""

import socket
import threading
import time

import pytest
from django.utils import timezone

from executions import dispatch, nodes, submission
from executions.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


class RawAgent:
    """Reads each request's head, then runs `answer(sock)`; counts requests per X-Execution-ID."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.ids: list[str] = []
        self.open = 0
        self.stop = threading.Event()

    def __enter__(self) -> "RawAgent":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        self.open += 1
        try:
            head = b""
            while b"\r\n\r\n" not in head and (chunk := sock.recv(65536)):
                head += chunk
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"x-execution-id:"):
                    self.ids.append(line.split(b":", 1)[1].strip().decode())
            self.answer(sock, self.stop)
        except OSError:
            pass
        finally:
            self.open -= 1
            sock.close()


def cut_off(sock, stop) -> None:
    sock.sendall(HEAD % 30 + b'{"answer":')


def stalled(sock, stop) -> None:
    sock.sendall(HEAD % 30 + b'{"answer":')
    stop.wait(10)


def trickled_body(sock, stop) -> None:
    sock.sendall(HEAD % 100)
    for _ in range(100):
        if stop.wait(0.2):
            return
        sock.sendall(b" ")


def trickled_head(sock, stop) -> None:
    for byte in HEAD % 2 + b"{}":
        if stop.wait(0.2):
            return
        sock.sendall(bytes([byte]))


def _called(url: str) -> Execution:
    nodes.register({"id": "odd", "base_url": url, "version": "1", "reasoners": [{"id": "process"}]})
    execution = submission.submit(submission.Request(target="odd.process", input={}), enqueue=False)[0]
    return execution


def _not_dispatched_again(execution: Execution) -> None:
    Execution.objects.filter(pk=execution.pk).update(dispatch_lease_until=timezone.now())
    assert dispatch.requeue_lapsed() == 0


@pytest.mark.parametrize(("answer", "category"), [(cut_off, "bad_response"), (stalled, "agent_timeout")])
def test_a_200_whose_body_breaks_off_fails_once(settings, answer, category):
    settings.AGENT_CALL_TIMEOUT = 1
    with RawAgent(answer) as agent:
        execution = _called(agent.url)
        assert dispatch.run(execution.id) == "failed"
        execution.refresh_from_db()
        assert (execution.status, execution.error_category) == ("failed", category)
        assert execution.error_details["http_status"] == 200
        _not_dispatched_again(execution)
        assert agent.ids == [execution.id]


@pytest.mark.parametrize("answer", [trickled_body, trickled_head])
def test_an_answer_trickled_a_byte_at_a_time_is_cut_off_at_the_call_timeout(settings, answer):
    settings.AGENT_CALL_TIMEOUT = 1.5
    with RawAgent(answer) as agent:
        execution = _called(agent.url)
        started = time.monotonic()
        assert dispatch.run(execution.id) == "failed"
        assert time.monotonic() - started < 3, "the call timeout bounds the whole call, not each read"
        execution.refresh_from_db()
        assert (execution.status, execution.error_category) == ("failed", "agent_timeout")
        _not_dispatched_again(execution)
        assert agent.ids == [execution.id]
