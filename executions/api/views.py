"""The AgentField API for nodes and executions: thin views over the service modules."""

import re
import time
from collections.abc import AsyncIterator
from datetime import datetime

import django_filters
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import QuerySet, Sum
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, status
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param
from rest_framework.views import APIView

from agentfield_site.auth import AGENT, CLIENT, caller_of
from agentfield_site.lib.api import ApiError, ErrorSerializer, int_param, object_body, validated
from agentfield_site.lib.concurrency_limit import lend_place
from agentfield_site.lib.db_threads import on_request_thread
from agentfield_site.lib.drf_json import SafeJSONRenderer
from agentfield_site.lib.timefmt import fits_utc, iso

from .. import cancellation, lifecycle, nodes, reports, submission
from ..errors import UnknownExecution, UnknownNode
from ..models import STATUSES, Execution
from ..ownership import executions_of, executions_readable_by, nodes_of, submission_owner
from . import serializers as s

# Answers of their own; those every operation can give are added to the schema by
# `agentfield_site.lib.openapi`.
CONFLICT = {409: ErrorSerializer}


def _body(request: Request, serializer_class) -> dict:
    """The request's JSON object validated by `serializer_class`; 400 with `error_category` otherwise."""
    return validated(serializer_class, object_body(request, error_category="bad_request"), error_category="bad_request")


# --- Nodes -------------------------------------------------------------------------


class NodeListRegisterView(APIView):
    """`GET /api/v1/nodes` lists nodes; `POST` is an alias of `/nodes/register`."""

    scopes = (AGENT,)

    @extend_schema(responses={200: s.NodeListSerializer}, operation_id="nodes_list")
    def get(self, request: Request) -> StreamingHttpResponse:
        # Every node, as the SDK's `get_nodes` expects, sent as it is rendered.
        found = nodes_of(caller_of(request))
        ids = list(found.values_list("pk", flat=True))  # before the 200: a failure here is a 500
        return StreamingHttpResponse(_node_list(request._request, found, ids), content_type="application/json")

    @extend_schema(
        request=s.NodeRegistrationSerializer, responses={201: s.NodeRegisteredSerializer, **CONFLICT},
        operation_id="nodes_register_alias",
    )
    def post(self, request: Request) -> Response:
        return _register(request)


# Nodes read and rendered per group: a key's thousand nodes, each described in up to
# NODE_MAX_DESCRIPTION_BYTES, never sit in a web process's memory at once (built
# whole, one list of 150 nodes of 1 MB took daphne from 120 MB to over a gigabyte).
NODE_LIST_GROUP = 20


async def _node_list(request: HttpRequest, found: QuerySet, ids: list[str]) -> AsyncIterator[bytes]:
    # A group that fails (the database gone mid-list) cuts the answer off (`Backpressure`).
    yield b'{"nodes":['
    sent = 0
    for start in range(0, len(ids), NODE_LIST_GROUP):
        documents = await on_request_thread(request, _rendered_nodes, found, ids[start:start + NODE_LIST_GROUP])
        if documents:
            yield (b"," if sent else b"") + b",".join(documents)
            sent += len(documents)
    yield b'],"count":%d}' % sent  # the nodes sent: one removed meanwhile is left out of both


def _rendered_nodes(found: QuerySet, ids: list[str]) -> list[bytes]:
    renderer = SafeJSONRenderer()
    return [renderer.render(s.NodeSerializer(node).data) for node in found.filter(pk__in=ids)]


class NodeRegisterView(APIView):
    scopes = (AGENT,)

    @extend_schema(request=s.NodeRegistrationSerializer, responses={201: s.NodeRegisteredSerializer, **CONFLICT})
    def post(self, request: Request) -> Response:
        return _register(request)


def _register(request: Request) -> Response:
    node, created = nodes.register(_body(request, s.NodeRegistrationSerializer), caller_of(request))
    answer = {
        "success": True,
        "message": "node registered" if created else "node re-registered",
        "node_id": node.id,
        "resolved_base_url": node.base_url,
    }
    return Response(s.NodeRegisteredSerializer(answer).data, status=status.HTTP_201_CREATED)


class NodeDetailView(APIView):
    scopes = (AGENT,)

    @extend_schema(responses={200: s.NodeSerializer})
    def get(self, request: Request, node_id: str) -> Response:
        node = nodes_of(caller_of(request)).filter(pk=node_id).first()
        if node is None:
            raise UnknownNode(node_id)
        return Response(s.NodeSerializer(node).data)


def _heartbeat_ack(beat: datetime) -> dict:
    return {"success": True, "message": "heartbeat received", "timestamp": iso(beat)}


class NodeHeartbeatView(APIView):
    scopes = (AGENT,)

    @extend_schema(request=s.HeartbeatSerializer, responses={200: s.HeartbeatAckSerializer})
    def post(self, request: Request, node_id: str) -> Response:
        data = _body(request, s.HeartbeatSerializer)
        return Response(_heartbeat_ack(nodes.heartbeat(node_id, data.get("status") or "", caller_of(request))))


_HEARTBEAT_FIELDS = s.HeartbeatSerializer._declared_fields
_STATUS_MAX = _HEARTBEAT_FIELDS["status"].max_length


def _plain_status(body: dict) -> str | None:
    """The status of a heartbeat body made of plain strings; None leaves the body to the serializer."""
    for name in _HEARTBEAT_FIELDS:
        if name in body and (not isinstance(body[name], str) or "\x00" in body[name]):
            return None
    status = body.get("status", "").strip()
    return status if len(status) <= _STATUS_MAX else None


def heartbeat_answer(request: HttpRequest, caller, body: dict, node_id: str) -> tuple[int, dict] | None:
    """The fast lane's heartbeat: a body of plain strings (else the serializer judges it), a known node."""
    status = _plain_status(body)
    if status is None:
        return None
    try:
        return 200, _heartbeat_ack(nodes.heartbeat(node_id, status, caller))
    except UnknownNode:
        return None


def heartbeat_from_memory(caller, body: dict, node_id: str) -> tuple[int, dict] | None:
    """On the event loop, no statement: a beat of a node this process lately found online (`nodes.beat_from_memory`)."""
    status = _plain_status(body)
    beat = None if status is None else nodes.beat_from_memory(node_id, status, caller)
    return None if beat is None else (200, _heartbeat_ack(beat))


class NodeShutdownView(APIView):
    scopes = (AGENT,)

    @extend_schema(request=None, responses={200: s.SuccessSerializer})
    def post(self, request: Request, node_id: str) -> Response:
        object_body(request, error_category="bad_request")
        nodes.shutdown(node_id, caller_of(request))
        return Response({"success": True, "message": f"node {node_id} is offline"})


class DidRegisterView(APIView):
    """DID identities are not offered; the SDK carries on without them."""

    scopes = (AGENT,)

    @extend_schema(request=OpenApiTypes.OBJECT, responses={404: ErrorSerializer})
    def post(self, request: Request) -> Response:
        raise ApiError(404, "not_supported", "DID registration is not enabled on this control plane.")


class WorkflowEventView(APIView):
    scopes = (AGENT,)

    @extend_schema(request=OpenApiTypes.OBJECT, responses={200: s.WorkflowEventAckSerializer})
    def post(self, request: Request) -> Response:
        applied = reports.apply_workflow_event(object_body(request, error_category="bad_request"), caller_of(request))
        return Response({"success": True, "applied": applied})


class ExecutionLogsView(APIView):
    scopes = (AGENT,)

    @extend_schema(request=s.LogsRequestSerializer, responses={200: s.LogsAcceptedSerializer})
    def post(self, request: Request, execution_id: str) -> Response:
        entries = _body(request, s.LogsRequestSerializer)["entries"]
        count = reports.append_logs(execution_id, entries, caller_of(request))
        return Response({"success": True, "accepted": count})


class ExecutionNoteView(APIView):
    """`POST /api/v1/executions/note`: the SDK's `app.note()`, one `execution.log` entry of kind `note`."""

    scopes = (AGENT,)

    @extend_schema(request=s.NoteRequestSerializer, responses={200: s.LogsAcceptedSerializer},
                   parameters=[OpenApiParameter("X-Execution-ID", OpenApiTypes.STR, OpenApiParameter.HEADER)])
    def post(self, request: Request) -> Response:
        note = _body(request, s.NoteRequestSerializer)
        execution_id = request.headers.get("X-Execution-ID") or ""
        if not execution_id or len(execution_id) > 128 or s.CONTROL_CHARACTER.search(execution_id):
            raise ApiError(400, "bad_request", "A note names its execution in the X-Execution-ID header.")
        entry = {"kind": "note", "message": note["message"], "tags": note.get("tags") or []}
        if note.get("timestamp") is not None:
            entry["timestamp"] = note["timestamp"]
        count = reports.append_logs(execution_id, [entry], caller_of(request))
        return Response({"success": True, "accepted": count})


class ExecutionStatusCallbackView(APIView):
    scopes = (AGENT,)

    @extend_schema(request=s.StatusCallbackSerializer, responses={200: s.ExecutionStatusSerializer, **CONFLICT})
    def post(self, request: Request, execution_id: str) -> Response:
        report = _body(request, s.StatusCallbackSerializer)
        execution = reports.apply_status(execution_id, report, caller_of(request))
        return Response(s.ExecutionStatusSerializer(execution).data)


# --- Executions --------------------------------------------------------------------

_SUBMIT_HEADERS = [
    OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.HEADER, required=False)
    for name in s.SubmitHeadersSerializer.header_names().values()
]


def _submission(headers, target: str, body: object, caller) -> submission.Request:
    """The submission a request's JSON body and headers describe, validated by their serializers."""
    body = validated(s.ExecuteRequestSerializer, body, error_category="bad_request")
    fields = s.SubmitHeadersSerializer.data_from(headers)
    if any(fields.values()):  # most submissions send none: nothing to validate
        fields = validated(s.SubmitHeadersSerializer, fields, error_category="bad_request")
    owner_id = submission_owner(caller, fields["parent_execution_id"])
    return submission.Request(target=target, owner_id=owner_id, submitted_by_id=caller.key_id, **body, **fields)


def _submitted(headers, target: str, body: object, caller) -> dict:
    execution, _ = submission.submit(_submission(headers, target, body, caller))
    return s.SubmissionSerializer(execution).data


class ExecuteAsyncView(APIView):
    scopes = (CLIENT, AGENT)  # agent keys: calls from their executions only (`ownership.call_owner`)

    @extend_schema(
        request=s.ExecuteRequestSerializer,
        parameters=_SUBMIT_HEADERS,
        responses={202: s.SubmissionSerializer, **CONFLICT},
    )
    def post(self, request: Request, target: str) -> Response:
        body = object_body(request, error_category="bad_request")
        return Response(_submitted(request.headers, target, body, caller_of(request)), status=status.HTTP_202_ACCEPTED)


def submit_answer(request: HttpRequest, caller, body: dict, target: str) -> tuple[int, dict]:
    """The fast lane's async submit (a refusal is raised before anything is written)."""
    return status.HTTP_202_ACCEPTED, _submitted(request.headers, target, body, caller)


class ExecuteSyncView(APIView):
    """`POST /api/v1/execute/{target}`, first half: auth, scope, validation and submission.

    The route itself is `execute_sync`, an async view that runs this one, then
    waits for the agent without holding a request place, and answers.
    """

    # Not agent keys: an agent's call waits for its answer by reading it (as the SDK's
    # app.call does), not on the sync threads that every client's sync call shares.
    scopes = (CLIENT,)

    @extend_schema(
        request=s.ExecuteRequestSerializer,
        parameters=_SUBMIT_HEADERS,
        responses={200: s.SyncResultSerializer, 502: s.SyncErrorSerializer, 504: s.SyncErrorSerializer,
                   **CONFLICT},
    )
    def post(self, request: Request, target: str) -> Response:
        body = object_body(request, error_category="bad_request")
        execution, created = submission.submit(
            _submission(request.headers, target, body, caller_of(request)), enqueue=False
        )
        response = Response(status=status.HTTP_202_ACCEPTED)
        response.submitted = (execution.id, created)
        return response


_submit_sync = ExecuteSyncView.as_view()


def _begin_sync(request: HttpRequest, target: str) -> Response:
    response = _submit_sync(request, target=target)
    response.render()
    return response


@csrf_exempt  # as DRF's views are: the DRF view inside checks CSRF for session callers
async def execute_sync(request: HttpRequest, target: str) -> HttpResponse:
    """The sync API: submit, then wait for the agent's outcome without holding a request place."""
    deadline = time.monotonic() + settings.AGENT_CALL_TIMEOUT
    begun = await submission.on_sync_pool(_begin_sync, request, target)
    submitted = getattr(begun, "submitted", None)
    if submitted is None:
        return begun  # refused: 401, 403, 400, 404, 503, as the DRF view answered
    async with lend_place(request):
        execution = await submission.wait_for_outcome(*submitted, deadline)
    code, body = s.sync_outcome(execution)
    # Rendered as every other API answer is (compact, a bad stored value escaped).
    return HttpResponse(SafeJSONRenderer().render(body), status=code, content_type="application/json")


# The schema documents the DRF view that does the first half.
execute_sync.cls = ExecuteSyncView
execute_sync.initkwargs = {}


class _InstantField(django_filters.fields.IsoDateTimeField):
    def to_python(self, value):
        value = super().to_python(value)
        if value is not None and not fits_utc(value):
            raise ValidationError("Enter a time between the years 1 and 9999 in UTC.", code="invalid")
        return value


class _InstantFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 time that is also an instant the database can compare (`fits_utc`)."""

    field_class = _InstantField


class ExecutionFilter(django_filters.FilterSet):
    status = django_filters.CharFilter(method="filter_status", help_text=f"One of {', '.join(STATUSES)} or an alias.")
    agent_node_id = django_filters.CharFilter()
    workflow_id = django_filters.CharFilter()
    target = django_filters.CharFilter()
    since = _InstantFilter(field_name="created_at", lookup_expr="gte")
    until = _InstantFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Execution
        fields = ["status", "agent_node_id", "workflow_id", "target", "since", "until"]

    def filter_status(self, queryset, name: str, value: str):
        try:
            return queryset.filter(status=lifecycle.normalize(value))
        except ValueError:
            raise exceptions.ValidationError({"status": f"Unknown status {value!r}."}) from None


_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class ExecutionCursor(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500

    def paginate_queryset(self, queryset, request, view=None):
        """The page, holding fewer than `limit` rows where their results would pass API_PAGE_MAX_BYTES.

        The page is chosen on light rows (the key, the time and the documents' size),
        shortened to what fits (at least one row), and only then are its rows loaded:
        a page of 500 executions with 1 MB results would hold half a gigabyte.
        """
        self._fitting = None
        light = queryset.only("pk", "created_at").annotate(document_size=s.document_size())
        page = self._light_page(light, request, view)
        in_query_order = page[::-1] if self.cursor is not None and self.cursor.reverse else page
        fitting, total = 0, 0
        for row in in_query_order:
            total += row.document_size
            if fitting and total > settings.API_PAGE_MAX_BYTES:
                break
            fitting += 1
        if fitting < len(page):
            self._fitting = fitting
            page = self._light_page(light, request, view)
        loaded = queryset.in_bulk([row.pk for row in page])
        self.page = [loaded[row.pk] for row in page if row.pk in loaded]
        return self.page

    def _light_page(self, light, request, view) -> list:
        try:
            return super().paginate_queryset(light, request, view)
        except exceptions.NotFound:
            raise ApiError(400, "bad_request", "The cursor is not valid; start from the first page.") from None

    def get_page_size(self, request) -> int:
        # DRF silently falls back to the default for a limit it cannot read.
        return self._fitting or int_param(request, "limit", self.page_size, self.max_page_size) or self.page_size

    def encode_cursor(self, cursor) -> str:
        # The links copy the request's query, and a key sent as ?api_key= would end
        # up in every client's logs and history with them: the caller adds its own.
        return remove_query_param(super().encode_cursor(cursor), "api_key")

    def decode_cursor(self, request):
        # DRF's base64 decoding skips characters it does not know (so "%%%" reads as
        # the first page), and it hands the position (a created_at) to the query as it
        # came: a forged one would fail there, as a 500.
        raw = request.query_params.get(self.cursor_query_param)
        if raw and not _BASE64.fullmatch(raw):
            raise exceptions.NotFound("Invalid cursor")
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                position = parse_datetime(cursor.position)
            except ValueError:
                position = None
            valid = position is not None and fits_utc(position)
            if not valid:
                raise exceptions.NotFound("Invalid cursor")
        return cursor


class ExecutionListView(generics.ListAPIView):
    scopes = (CLIENT,)
    queryset = Execution.objects.all()
    filterset_class = ExecutionFilter
    pagination_class = ExecutionCursor
    serializer_class = s.ExecutionStatusSerializer

    def get_queryset(self):
        return executions_of(caller_of(self.request))


def _status_of(caller, execution_id: str) -> dict | None:
    try:
        # get(), not first(): one row by its key needs no ORDER BY (compiling it was a fifth of a read).
        execution = executions_readable_by(caller).get(pk=execution_id)
    except Execution.DoesNotExist:
        return None
    return s.ExecutionStatusSerializer(execution).data


class ExecutionDetailView(APIView):
    scopes = (CLIENT, AGENT)  # agent keys: theirs and the calls made from them (`executions_readable_by`)

    @extend_schema(responses={200: s.ExecutionStatusSerializer})
    def get(self, request: Request, execution_id: str) -> Response:
        doc = _status_of(caller_of(request), execution_id)
        if doc is None:
            raise UnknownExecution(execution_id)
        return Response(doc)


def status_answer(request: HttpRequest, caller, body: None, execution_id: str) -> tuple[int, dict] | None:
    """The fast lane's execution read."""
    doc = _status_of(caller, execution_id)
    return None if doc is None else (200, doc)


class BatchStatusView(APIView):
    scopes = (CLIENT, AGENT)  # as the detail view

    @extend_schema(
        request=s.BatchStatusRequestSerializer,
        responses={200: OpenApiTypes.OBJECT},
        description="A map of execution id to its status document; `{\"status\": \"not_found\"}` for misses.",
    )
    def post(self, request: Request) -> Response:
        ids = _body(request, s.BatchStatusRequestSerializer)["execution_ids"]
        mine = executions_readable_by(caller_of(request)).filter(pk__in=ids)
        size = mine.aggregate(size=Sum(s.document_size()))["size"] or 0
        if size > settings.API_PAGE_MAX_BYTES:
            raise ApiError(413, "payload_too_large", f"These executions' results and errors hold about {size} bytes, "
                           f"more than one answer carries ({settings.API_PAGE_MAX_BYTES}, API_PAGE_MAX_BYTES): "
                           "ask for fewer ids at a time.")
        found = {doc["execution_id"]: doc for doc in s.ExecutionStatusSerializer(mine, many=True).data}
        return Response({i: found.get(i, {"execution_id": i, "status": "not_found"}) for i in ids})


class ExecutionCancelView(APIView):
    scopes = (CLIENT,)

    @extend_schema(request=s.CancelRequestSerializer, responses={200: s.CancelledSerializer, **CONFLICT})
    def post(self, request: Request, execution_id: str) -> Response:
        data = _body(request, s.CancelRequestSerializer)
        cancelled = cancellation.cancel(execution_id, data.get("reason") or "", caller_of(request))
        return Response(s.CancelledSerializer(cancelled).data)
