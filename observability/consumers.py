"""WebSocket `/ws/events`: every event document as a JSON text frame (a client key: its own executions').

Same tail, filters, resume and auth as the SSE streams. A client may (re)subscribe at
any time with `{"action": "subscribe", "filters": {...}, "last_event_id": N}`; the
server answers `{"type": "stream.subscribed", ...}` once the subscription is live,
then sends the replay and the live events in id order. Errors in a message come back
as `{"type": "error", "error": "bad_request", "message": ...}`; the socket stays open.
"""

import asyncio
import contextlib
import json
from dataclasses import replace
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from agentfield_site.auth import caller_for, raw_key_from
from agentfield_site.lib import strict_json

from .stream_filters import EventFilter, FilterError, parse_filters
from .streams import (
    RECHECK_SECONDS,
    BadStreamRequest,
    open_streams,
    parse_last_event_id,
    streamed_owner,
)
from .tail import Listener, get_tailer, run_db

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_BAD_REQUEST = 4400
CLOSE_TOO_MANY = 4429
# Daphne pings the socket itself; this only bounds how long a wait lasts.
_IDLE_WAIT_SECONDS = 30.0


def _query(scope: dict) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin1"))
    return {key: values[-1] for key, values in parsed.items()}


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope.get("headers", [])}


def _last_event_id(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadStreamRequest("last_event_id must be a non-negative integer event id.")
    return parse_last_event_id(None, str(value))


class EventStreamConsumer(AsyncWebsocketConsumer):
    """One client socket: at most one live subscription at a time."""

    # No channel-layer inbox per socket: events come from the tail, which reads the
    # log. (An alias with no configuration makes channels skip the layer.)
    channel_layer_alias = "none:websocket-streams-read-the-log"
    _task: asyncio.Task | None = None
    _owner_id: int | None = None  # a client key's socket: its own executions' events only
    _raw_key = ""  # checked again on each subscribe and every RECHECK_SECONDS
    _holds_place = False  # one of its key's STREAM_MAX_PER_KEY places (streams.open_streams)

    async def connect(self) -> None:
        raw_key = raw_key_from(_headers(self.scope), _query(self.scope))
        self._raw_key = raw_key
        caller = await run_db(caller_for, self.scope.get("user"), raw_key)
        # Accept first so that the close code (4401/4403/4400) reaches the client; a
        # refusal before accept is only an HTTP 403 without a reason.
        await self.accept()
        if caller is None:
            await self._error("unauthorized", "A staff session or a valid API key (?api_key=) is required.")
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        # Every platform event for operators; a client key's own executions' events for it.
        self._owner_id = streamed_owner(caller, ())
        if not caller.is_admin and self._owner_id is None:
            await self._error(
                "forbidden", f"The event socket needs an admin or a client key; this key is {caller.scope}."
            )
            await self.close(code=CLOSE_FORBIDDEN)
            return
        if not open_streams.take(self._owner_id):
            await self._error("too_many_streams", f"This key has {settings.STREAM_MAX_PER_KEY} event streams open "
                              "on this server already (STREAM_MAX_PER_KEY); close one first.")
            await self.close(code=CLOSE_TOO_MANY)
            return
        self._holds_place = True
        query = _query(self.scope)
        try:
            flt = replace(parse_filters(query), owner_id=self._owner_id)
            last_event_id = _last_event_id(query.get("last_event_id"))
        except (FilterError, BadStreamRequest) as exc:
            await self._error("bad_request", str(exc))
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        await self._subscribe(flt, last_event_id)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = strict_json.loads(text_data if text_data is not None else (bytes_data or b""))
        except strict_json.InvalidJson as exc:
            await self._error("invalid_json", f"Messages must be JSON text: {exc}")
            return
        if not isinstance(message, dict) or message.get("action") != "subscribe":
            await self._error("bad_request", 'Send {"action": "subscribe", "filters": {...}, "last_event_id": N}.')
            return
        if not await self._still_valid():
            await self._revoked()
            return
        filters = message.get("filters")
        filters = {} if filters is None else filters  # absent or null: none; [], "" or 0 are not objects
        if not isinstance(filters, dict):
            await self._error("bad_request", "filters must be an object.")
            return
        try:
            flt = replace(parse_filters(filters), owner_id=self._owner_id)
            last_event_id = _last_event_id(message.get("last_event_id"))
        except (FilterError, BadStreamRequest) as exc:
            await self._error("bad_request", str(exc))
            return
        await self._subscribe(flt, last_event_id)

    async def disconnect(self, code: int) -> None:
        if self._holds_place:
            self._holds_place = False
            open_streams.give_back(self._owner_id)
        await self._stop()

    async def _error(self, error: str, message: str) -> None:
        await self.send(text_data=json.dumps({"type": "error", "error": error, "message": message}))

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _subscribe(self, flt: EventFilter, last_event_id: int | None) -> None:
        await self._stop()
        sub = await get_tailer().subscribe(flt, last_event_id)
        await self.send(
            text_data=json.dumps(
                {
                    "type": "stream.subscribed",
                    "last_event_id": sub.cursor if last_event_id is None else last_event_id,
                    "filters": {k: v for k, v in vars(flt).items() if v and k != "owner_id"},
                }
            )
        )
        self._task = asyncio.get_running_loop().create_task(self._pump(sub))

    async def _pump(self, sub: Listener) -> None:
        loop = asyncio.get_running_loop()
        recheck_at = loop.time() + RECHECK_SECONDS
        try:
            while True:
                event = await sub.next_event(min(_IDLE_WAIT_SECONDS, RECHECK_SECONDS))
                if loop.time() >= recheck_at:
                    if not await self._still_valid():
                        await self._revoked()
                        return
                    recheck_at = loop.time() + RECHECK_SECONDS
                if event is not None:
                    await self.send(text_data=event.json)
        finally:
            sub.close()

    async def _still_valid(self) -> bool:
        """Whether the socket's API key is still valid (a session's socket is checked once, at connect)."""
        return not self._raw_key or await run_db(caller_for, self.scope.get("user"), self._raw_key) is not None

    async def _revoked(self) -> None:
        await self._error("unauthorized", "The API key was revoked.")
        await self.close(code=CLOSE_UNAUTHORIZED)
