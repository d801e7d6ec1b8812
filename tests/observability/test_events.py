import pytest
from django.db import transaction

from observability import events
from observability.models import PlatformEvent


@pytest.mark.django_db(transaction=True)
def test_event_exists_only_if_its_transaction_commits():
    with pytest.raises(RuntimeError), transaction.atomic():
        events.publish("execution.created", execution_id="exec_1")
        raise RuntimeError("the state change failed")
    assert not PlatformEvent.objects.exists()

    with transaction.atomic():
        events.publish("execution.created", execution_id="exec_2")
    assert list(PlatformEvent.objects.values_list("execution_id", flat=True)) == ["exec_2"]


@pytest.mark.django_db(transaction=True)
def test_ids_increase_in_publish_order_and_document_has_contract_shape():
    first, second = events.publish_many(
        [
            events.build("node.registered", agent_node_id="analyzer"),
            events.build("execution.completed", execution_id="exec_1", status="succeeded", data={"result": {"x": 1}}),
        ]
    )
    assert second.id > first.id
    doc = second.as_document()
    assert doc["type"] == "execution.completed"
    assert doc["source"] == "execution"
    assert doc["status"] == "succeeded"
    assert doc["data"] == {"result": {"x": 1}}
    assert doc["timestamp"].endswith("Z")
    assert "agent_node_id" not in doc
    assert first.as_document()["source"] == "node"


@pytest.mark.django_db(transaction=True)
def test_listeners_run_inside_the_transaction_and_after_commit(monkeypatch):
    seen_inside: list[list[int]] = []
    seen_after: list[int] = []
    monkeypatch.setattr(events, "in_transaction", [lambda evs: seen_inside.append([e.id for e in evs])])
    monkeypatch.setattr(events, "after_commit", [seen_after.append])

    with transaction.atomic():
        a = events.publish("node.online", agent_node_id="n1")
        b = events.publish("node.offline", agent_node_id="n1")
        assert seen_inside == [[a.id], [b.id]]
        assert seen_after == []
    assert seen_after == [a.id, b.id]

    with pytest.raises(RuntimeError), transaction.atomic():
        events.publish("node.online", agent_node_id="n2")
        raise RuntimeError
    assert seen_after == [a.id, b.id]
