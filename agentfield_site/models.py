import hashlib
import secrets

from django.db import models, transaction
from django.utils import timezone

from .signals import key_revoked


def hash_key(raw: str) -> str:
    """API keys are stored as SHA-256 digests; a key is high-entropy, so no salt is needed."""
    return hashlib.sha256(raw.encode()).hexdigest()


def new_raw_key() -> str:
    return "afk_" + secrets.token_urlsafe(32)


class ApiKeyQuerySet(models.QuerySet):
    def revoke(self) -> int:
        """Revoke the keys in this queryset not revoked yet; returns how many.

        Every process refuses them within API_KEY_CACHE_SECONDS (this one at once),
        and what they left running ends with them (`signals.key_revoked`).
        """
        from .auth import forget_keys

        now = timezone.now()
        with transaction.atomic():
            keys = list(self.filter(revoked_at__isnull=True))
            revoked = [key for key in keys if ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now)]
            for key in revoked:
                key.revoked_at = now
            if revoked:
                key_revoked.send(sender=ApiKey, keys=revoked)
        forget_keys()
        return len(revoked)


class ApiKey(models.Model):
    """A hashed API key with a scope; the objects it creates record it as their owner.

    Keys are revoked, never deleted: executions, nodes and subscriptions point at
    the key that made them, and a deleted key would orphan them.
    """

    class Scope(models.TextChoices):
        ADMIN = "admin", "admin: everything"
        CLIENT = "client", "client: its own executions, subscriptions and dead letters"
        AGENT = "agent", "agent: its own nodes and the executions dispatched to them"

    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.CLIENT)
    prefix = models.CharField(max_length=12, help_text="First characters, to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The demo agent must keep working when a reader makes the first key while `make run`
    # is up, yet its own key must not end the open API for everyone else: it is left out
    # of "does any key exist" (auth.keys_required).
    demo = models.BooleanField(
        default=False, editable=False,
        help_text="The demo agent's key, made by manage.py serve: it does not end the open API.",
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.scope}, {self.prefix}…)"

    @classmethod
    def create(cls, name: str, scope: str = Scope.CLIENT, *, demo: bool = False) -> tuple["ApiKey", str]:
        """Make a key; the raw key is returned once and never stored."""
        if scope not in cls.Scope.values:
            raise ValueError(f"unknown scope {scope!r}")
        raw = new_raw_key()
        key = cls.objects.create(name=name, scope=scope, prefix=raw[:10], key_hash=hash_key(raw), demo=demo)
        return key, raw

    def reissue(self) -> str:
        """A new raw key for this same row (same owner of the same objects); the old one stops working."""
        raw = new_raw_key()
        self.prefix, self.key_hash, self.revoked_at = raw[:10], hash_key(raw), None
        self.save(update_fields=["prefix", "key_hash", "revoked_at"])
        return raw


class Lease(models.Model):
    """A named, expiring lock held by one process at a time (the sweeper, the forwarder)."""

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=64, blank=True)
    expires_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # The table keeps the name it had when the model lived in observability: moving the
        # job machinery down changed the code's home, not the schema.
        db_table = "observability_lease"

    def __str__(self) -> str:
        return self.name
