from datetime import timedelta

import pytest
from django.utils import timezone

from observability import events, retention
from observability.models import PlatformEvent


@pytest.mark.django_db(transaction=True)
def test_prune_drops_only_events_past_retention(settings):
    settings.EVENT_RETENTION_DAYS = 7
    old = events.publish("node.online", agent_node_id="n1")
    PlatformEvent.objects.filter(id=old.id).update(timestamp=timezone.now() - timedelta(days=8))
    fresh = events.publish("node.offline", agent_node_id="n1")
    assert retention.prune(batch=1) == 1
    assert list(PlatformEvent.objects.values_list("id", flat=True)) == [fresh.id]
