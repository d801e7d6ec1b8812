"""API key authentication, shared by the REST API, SSE streams and WebSockets.

A key comes as `X-API-Key`, `Authorization: Bearer`, or `?api_key=` (EventSource
cannot set headers). Keys are enforced once any exists, from `API_KEYS` or the admin.
"""

import hmac
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from .models import ApiKey, hash_key


class ApiKeyPrincipal:
    """What `request.user` is for a caller holding an API key."""

    is_authenticated = True
    is_staff = False
    is_active = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.username = name

    def __str__(self) -> str:
        return self.name


def keys_required() -> bool:
    return bool(settings.API_KEYS) or ApiKey.objects.filter(revoked_at__isnull=True).exists()


def raw_key_from(headers: dict[str, str], query: dict[str, str]) -> str:
    """The key a request carries, or ''. `headers` are lower-cased names."""
    if headers.get("x-api-key"):
        return headers["x-api-key"].strip()
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return (query.get("api_key") or "").strip()


def check_key(raw: str) -> ApiKeyPrincipal | None:
    """The principal for a valid key, else None."""
    if not raw:
        return None
    for configured in settings.API_KEYS:
        if hmac.compare_digest(configured.encode(), raw.encode()):
            return ApiKeyPrincipal("env-key")
    key = ApiKey.objects.filter(key_hash=hash_key(raw), revoked_at__isnull=True).first()
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return ApiKeyPrincipal(key.name)


def is_allowed(user, raw_key: str) -> bool:
    """The one rule for every surface: staff session, a valid key, or no keys configured."""
    if user is not None and getattr(user, "is_authenticated", False) and getattr(user, "is_staff", False):
        return True
    if check_key(raw_key) is not None:
        return True
    return not keys_required()


def may_scrape_metrics(user, raw_key: str) -> bool:
    """/metrics: METRICS_TOKEN or what the API accepts; never open once a token is set."""
    token = settings.METRICS_TOKEN
    if not token:
        return is_allowed(user, raw_key)
    if raw_key and hmac.compare_digest(token.encode(), raw_key.encode()):
        return True
    staff = user is not None and getattr(user, "is_authenticated", False) and getattr(user, "is_staff", False)
    return staff or check_key(raw_key) is not None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        headers = {k.lower(): v for k, v in request.headers.items()}
        raw = raw_key_from(headers, request.query_params)
        if not raw:
            session_user = getattr(request._request, "user", None)
            if session_user is not None and session_user.is_authenticated and session_user.is_staff:
                # A cookie rides along on cross-site requests: the CSRF check is what
                # makes a session as safe as a key for unsafe methods.
                authentication.SessionAuthentication().enforce_csrf(request)
                return (session_user, None)
            return None
        principal = check_key(raw)
        if principal is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        return (principal, raw)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class HasApiKeyIfConfigured(permissions.BasePermission):
    message = "An API key is required: send X-API-Key, Authorization: Bearer, or ?api_key=."

    def has_permission(self, request, view) -> bool:
        if request.user is not None and getattr(request.user, "is_authenticated", False):
            return True
        return not keys_required()
