from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from agentfield_site.jobs import sweeper
        from agentfield_site.lib.metrics import register
        from agentfield_site.signals import key_revoked
        from observability import events, owners, stream_filters

        from . import delivery, ownership, subscriptions
        from .metrics import WebhookCollector
        from .models import Destination, Subscription

        events.in_transaction.append(subscriptions.on_events)
        if ownership.subscription_owners not in owners.subscription_owners:
            owners.subscription_owners.append(ownership.subscription_owners)
            owners.subscriptions_owned_by.append(ownership.subscriptions_owned_by)
        stream_filters.statuses.update({s: s for s in (*delivery.EVENT_STATUSES, *Destination.State.values)})
        sweeper.ticks.append(delivery.tick)
        key_revoked.connect(subscriptions.disable_subscriptions_of_revoked, dispatch_uid="webhooks.subscriptions.revoked")
        post_save.connect(subscriptions.invalidate_cache, sender=Subscription, dispatch_uid="webhooks.sub.save")
        post_delete.connect(subscriptions.invalidate_cache, sender=Subscription, dispatch_uid="webhooks.sub.delete")
        register("webhooks", WebhookCollector())
