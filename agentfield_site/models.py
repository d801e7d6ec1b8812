import hashlib
import secrets

from django.db import models
from django.utils import timezone


def hash_key(raw: str) -> str:
    """API keys are stored as SHA-256 digests; a key is high-entropy, so no salt is needed."""
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKey(models.Model):
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="First characters, to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def create(cls, name: str) -> tuple["ApiKey", str]:
        """Make a key; the raw key is returned once and never stored."""
        raw = "afk_" + secrets.token_urlsafe(32)
        key = cls.objects.create(name=name, prefix=raw[:10], key_hash=hash_key(raw))
        return key, raw
