"""A name server on loopback for tests: names it answers, names it never answers.

`StubNameServer(answers={"fast.test": "127.0.0.1"}, silent={"slow.test"})` answers
A queries for `fast.test` and its subdomains with that address (AAAA with no
record), never answers anything under `slow.test` (a name server that is down or
drops packets), and answers NXDOMAIN for the rest. UDP only; point
WEBHOOK_NAMESERVERS at `server.address`.
"""

import socket
import struct
import threading

A, AAAA = 1, 28


def _name_and_end(message: bytes) -> tuple[str, int]:
    """The question's name and the offset just past its type and class."""
    labels, at = [], 12
    while message[at]:
        length = message[at]
        labels.append(message[at + 1 : at + 1 + length].decode("ascii", "replace"))
        at += 1 + length
    return ".".join(labels).lower(), at + 1 + 4


def _under(name: str, domains) -> str | None:
    return next((d for d in domains if name == d or name.endswith("." + d)), None)


class StubNameServer:
    def __init__(self, answers: dict[str, str] | None = None, silent: set[str] | frozenset = frozenset()) -> None:
        self.answers = answers or {}
        self.silent = set(silent)
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stub-nameserver", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> "StubNameServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                message, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                reply = self._reply(message)
            except (IndexError, struct.error):
                continue  # not a query this stub understands
            if reply is not None:
                self.sock.sendto(reply, peer)

    def _reply(self, message: bytes) -> bytes | None:
        name, end = _name_and_end(message)
        qtype = struct.unpack("!H", message[end - 4 : end - 2])[0]
        self.queries.append(name)
        if _under(name, self.silent):
            return None
        question = message[12:end]
        domain = _under(name, self.answers)
        if domain is None:  # NXDOMAIN
            return message[:2] + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0) + question
        records = b""
        if qtype == A:
            address = socket.inet_aton(self.answers[domain])
            # The name as a pointer to the question's (offset 12), type A, class IN, TTL 60.
            records = struct.pack("!HHHIH", 0xC00C, A, 1, 60, len(address)) + address
        return message[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if records else 0, 0, 0) + question + records
