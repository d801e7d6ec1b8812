"""Signals the site layer sends and the apps above it answer (they may not be imported from here)."""

from django.dispatch import Signal

# Sent by `ApiKey.objects.revoke()` with `keys`, the rows it just revoked, inside
# the revoking transaction: each app ends what those keys left running (executions:
# their nodes go offline; webhooks: their subscriptions stop).
key_revoked = Signal()
