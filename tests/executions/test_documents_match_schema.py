"""Every key a response document carries is a field its serializer declares (so the
OpenAPI schema lists it), and every field the schema requires is there: checked
with every optional value set and with none, which generated requests rarely reach."""

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from executions import lifecycle, submission
from executions.api import serializers as s
from executions.models import Execution

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def components() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]


def _conforms(document: dict, component: dict) -> None:
    declared = set(component["properties"])
    assert set(document) <= declared, f"undeclared: {set(document) - declared}"
    assert set(component.get("required", [])) <= set(document), "required but missing"


def _bare(node) -> Execution:
    return submission.submit(submission.Request(target="analyzer.process", input={}), enqueue=False)[0]


def _full(node, settings) -> Execution:
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    execution, _ = submission.submit(
        submission.Request(
            target="analyzer.process", input={"n": 1}, webhook={"url": "http://127.0.0.1:9/hook"},
            run_id="run_x", parent_execution_id="exec_parent", session_id="sess", actor_id="actor",
        ),
        enqueue=False,
    )
    lifecycle.transition(execution.id, "running")
    lifecycle.transition(
        execution.id, "failed", error="boom", error_category="agent_error", error_details={"http_status": 500},
        status_reason="agent said no", result={"partial": True},
    )
    Execution.objects.filter(pk=execution.id).update(webhook_error="refused at first")
    return Execution.objects.get(pk=execution.id)


def test_status_documents_match_the_schema(node, settings, components):
    for execution in (_bare(node), _full(node, settings)):
        document = APIClient().get(f"/api/v1/executions/{execution.id}").json()
        _conforms(document, components["ExecutionStatus"])
    full = document
    for name in ("parent_execution_id", "session_id", "actor_id", "webhook_error", "status_reason", "error_details"):
        assert name in full, name
    assert full["webhook_events"] and set(full["webhook_events"][0]) <= set(components["WebhookEvent"]["properties"])


def test_submission_sync_and_node_documents_match_the_schema(node, settings, components):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    answer = APIClient().post(
        "/api/v1/execute/async/analyzer.process", {"input": {}, "webhook": {"url": "http://127.0.0.1:9/"}},
        format="json",
    ).json()
    _conforms(answer, components["Submission"])
    assert "webhook_error" in answer
    execution = _full(node, settings)
    _conforms(s.SyncErrorSerializer(execution).data, components["SyncError"])
    Execution.objects.filter(pk=execution.id).update(status="succeeded")
    _conforms(s.SyncResultSerializer(Execution.objects.get(pk=execution.id)).data, components["SyncResult"])
    assert "workflow_id" in components["SyncResult"]["required"]
    _conforms(APIClient().get("/api/v1/nodes/analyzer").json(), components["Node"])
