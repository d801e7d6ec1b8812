"""Web processes that share one listening socket take its connections in turn.

`manage.py serve --web-processes N` hands every daphne the one socket it bound
(and tells them how many share it, `WEB_PROCESSES`). The kernel wakes every
process waiting on the socket when a connection arrives, and the first to run
takes it; Twisted's port then accepts up to 100 more in the same turn. So the
process that woke first took a burst whole: 32 keep-alive clients connecting at
once split 31 to 1, and one process served nearly all their requests while the
other idled. Here a process that shares its socket takes one connection, then
leaves the socket to the others for a millisecond: the same 32 split 14 to 18 or
better (`tests/site/test_web_processes.py`), and a busy process, whose turns are
long, takes fewer. (The fleet's p99, `python -m bench api --only=fleet`, moved
less with it: 807-918 ms against 417-1,372 ms without it, four alternating runs
each on a busy machine.)

The price is at most a thousand new connections a second per process, far more
than a web process serves requests; one process alone accepts as Twisted does.

`asgi.py` calls `install()`, so every way of starting daphne accepts this way.
"""

import contextvars

from django.conf import settings
from twisted.internet import tcp

# How long a process leaves the socket to the others after taking a connection.
TURN_SECONDS = 0.001


class _One:
    """`Port.numberAccepts` held at 1: Twisted rescales it after every turn."""

    def __get__(self, port, owner=None) -> int:
        return 1

    def __set__(self, port, value) -> None:
        pass


_accept = tcp.Port.doRead


def _accept_one_then_step_aside(port: tcp.Port) -> None:
    _accept(port)
    if port.connected:
        port.stopReading()
        port.reactor.callLater(TURN_SECONDS, _take_turns_again, port)


def _take_turns_again(port: tcp.Port) -> None:
    if port.connected:  # not closed meanwhile (daphne stopping)
        # In an empty context: asyncio keeps the context a reader is registered in and
        # runs every accept in it, while this timer runs in the context of whatever
        # last rescheduled Twisted's timer, a request often. Every connection accepted
        # after it inherited that request's asgiref context, long exited, and each
        # WebSocket (whose authentication hops to a thread) was answered 500.
        contextvars.Context().run(port.startReading)


def install() -> None:
    if settings.WEB_PROCESSES > 1:
        tcp.Port.numberAccepts = _One()
        tcp.Port.doRead = _accept_one_then_step_aside
