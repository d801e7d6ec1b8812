"""API keys and scopes, shared by the REST API, SSE streams and WebSockets.

A key comes as `X-API-Key`, `Authorization: Bearer`, or `?api_key=` (EventSource
cannot set headers). Keys are enforced once any exists, from `API_KEYS` or the admin;
the demo agent's own key (`ApiKey.demo`, made by `manage.py serve`) does not count.

Every authenticated call has a `Caller`: its scope (`admin`, `client`, `agent`) and
the key row that owns what it creates. `API_KEYS` and staff sessions are admins
without a row; with no key configured at all the API is open and every caller is
an admin (local development).
"""

import hmac
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from .models import ApiKey, hash_key

ADMIN, CLIENT, AGENT = ApiKey.Scope.ADMIN, ApiKey.Scope.CLIENT, ApiKey.Scope.AGENT


@dataclass(frozen=True)
class Caller:
    """Who is calling: a scope, and the key row (if any) that owns what it creates."""

    scope: str
    key_id: int | None = None
    name: str = ""

    @property
    def is_admin(self) -> bool:
        return self.scope == ADMIN

    def owns(self, owner_id: int | None) -> bool:
        """Whether an object owned by `owner_id` is this caller's (an admin's, always)."""
        return self.is_admin or (self.key_id is not None and owner_id == self.key_id)


OPEN = Caller(ADMIN, None, "open API")
STAFF = Caller(ADMIN, None, "staff session")
METRICS_TOKEN = Caller(ADMIN, None, "METRICS_TOKEN")


class ApiKeyPrincipal:
    """What `request.user` is for a caller holding an API key."""

    is_authenticated = True
    is_staff = False
    is_active = True

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.name = caller.name
        self.username = caller.name

    def __str__(self) -> str:
        return self.name


def keys_required() -> bool:
    """Whether the API is closed: an `API_KEYS` key, or a live key that is not the demo agent's.

    The demo agent always holds a key of its own, so it keeps working when the first
    key is made while it runs; that key must not close the API it was made for. An open
    API still listens on loopback only: `serve` refuses any other address (and the demo
    agent's key does not make it accept one).
    """
    return bool(settings.API_KEYS) or ApiKey.objects.filter(revoked_at__isnull=True, demo=False).exists()


def raw_key_from(headers: dict[str, str], query: dict[str, str]) -> str:
    """The key a request carries, or ''. `headers` are lower-cased names."""
    if headers.get("x-api-key"):
        return headers["x-api-key"].strip()
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return (query.get("api_key") or "").strip()


# Valid keys this process has looked up: key hash -> (caller, monotonic time to look again).
# Only keys found valid are kept, so a stream of made-up keys cannot grow it.
_remembered: dict[str, tuple[Caller, float]] = {}


def forget_keys() -> None:
    """Drop what this process remembers of keys (a key was revoked, reissued or changed here)."""
    _remembered.clear()


def _env_key(raw: str) -> Caller | None:
    for configured in settings.API_KEYS:
        if hmac.compare_digest(configured.encode(), raw.encode()):
            return Caller(ADMIN, None, "env-key")
    return None


def remembered_key(raw: str) -> Caller | None:
    """The caller for `raw` if it is known without a query (an `API_KEYS` key, or one looked up lately)."""
    if not raw:
        return None
    caller = _env_key(raw)
    if caller is not None:
        return caller
    known = _remembered.get(hash_key(raw))
    return known[0] if known is not None and known[1] > time.monotonic() else None


def check_key(raw: str) -> ApiKeyPrincipal | None:
    """The principal for a valid key, else None.

    A key found valid is remembered for API_KEY_CACHE_SECONDS: every API call asks
    this, and a fleet of agents sharing a key would otherwise cost a query per beat.
    """
    if not raw:
        return None
    caller = remembered_key(raw)
    if caller is not None:
        return ApiKeyPrincipal(caller)
    digest = hash_key(raw)
    # Values, not a model instance, keep it one cheap query.
    row = (
        ApiKey.objects.filter(key_hash=digest, revoked_at__isnull=True)
        .values_list("pk", "scope", "name", "last_used_at")
        .first()
    )
    if row is None:
        return None
    pk, scope, name, last_used_at = row
    now = timezone.now()
    if last_used_at is None or now - last_used_at > timedelta(minutes=1):
        ApiKey.objects.filter(pk=pk).update(last_used_at=now)
    caller = Caller(scope, pk, name)
    if settings.API_KEY_CACHE_SECONDS > 0:
        if len(_remembered) >= 10_000:
            _remembered.clear()
        _remembered[digest] = (caller, time.monotonic() + settings.API_KEY_CACHE_SECONDS)
    return ApiKeyPrincipal(caller)


def _is_staff(user) -> bool:
    return user is not None and getattr(user, "is_authenticated", False) and getattr(user, "is_staff", False)


def owned_by(caller: Caller, rows: QuerySet, scope: str) -> QuerySet:
    """Every row for an admin; the rows the caller's key created when it has `scope`; none otherwise."""
    if caller.scope == ADMIN:
        return rows
    if caller.scope == scope and caller.key_id is not None:
        return rows.filter(owner_id=caller.key_id)
    return rows.none()


def caller_for(user, raw_key: str) -> Caller | None:
    """The one rule for streams and sockets: staff session, a valid key, or no keys configured."""
    if _is_staff(user):
        return STAFF
    principal = check_key(raw_key)
    if principal is not None:
        return principal.caller
    return None if keys_required() else OPEN


def caller_of(request) -> Caller:
    """The caller of an authenticated DRF request (an admin on an open API)."""
    user = getattr(request, "user", None)
    if isinstance(user, ApiKeyPrincipal):
        return user.caller
    if _is_staff(user):
        return STAFF
    return OPEN


def metrics_caller(user, raw_key: str) -> Caller | None:
    """Who scrapes /metrics, or None when nothing valid was sent (a 401).

    METRICS_TOKEN, a staff session and admin keys may; any other caller is a 403. Open
    only while neither a key nor a token exists.
    """
    token = settings.METRICS_TOKEN
    if token and raw_key and hmac.compare_digest(token.encode(), raw_key.encode()):
        return METRICS_TOKEN
    caller = caller_for(user, raw_key)
    return None if token and caller is OPEN else caller


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


def scopes_of(view, method: str) -> tuple[str, ...]:
    """The scopes a view admits for `method`: its `scopes` (a tuple, or a dict by method); admin only by default."""
    declared = getattr(view, "scopes", (ADMIN,))
    if isinstance(declared, dict):
        declared = declared.get(method.lower(), (ADMIN,))
    return tuple(declared)


class InScope(permissions.BasePermission):
    """A key may call only the routes of its scope; anything else is a 403 `forbidden`."""

    def has_permission(self, request, view) -> bool:
        caller = caller_of(request)
        allowed = scopes_of(view, request.method)
        if caller.is_admin or caller.scope in allowed:
            return True
        # Admin keys may call everything: the message says so, whatever the view declares.
        others = [scope for scope in allowed if scope != ADMIN]
        needed = f"one of: {', '.join([ADMIN, *others])}" if others else "an admin key"
        raise exceptions.PermissionDenied(
            f"{request.method} {request.path} is not open to {caller.scope} keys (it needs {needed})."
        )
