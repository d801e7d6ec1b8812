"""Settings: one env-driven file. SQLite is the zero-set-up default.

Every value comes from the environment (or a `.env` file beside manage.py);
the README's configuration table lists them.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="insecure-dev-only-key" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is required when DEBUG is off: set it in the environment or in .env "
        "(`make run` writes one for you)."
    )
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Browser origins (scheme://host:port) allowed to open WebSockets besides the server's own.
ALLOWED_ORIGINS = env.list("ALLOWED_ORIGINS", default=[])
# The address `manage.py serve` (make run) binds: loopback unless set. Binding any other
# address with no API key configured is refused; the system checks read it too.
HOST = env.str("HOST", default="127.0.0.1")

# --- HTTPS: production behind TLS (README, "Production") ---------------------
# HTTPS=true: redirect http to https (except /health, for load balancers), secure
# cookies, HSTS. SECURE_PROXY_SSL_HEADER=true trusts X-Forwarded-Proto: set it only
# behind a proxy that sets that header itself.
HTTPS = env.bool("HTTPS", default=False)
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if HTTPS:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^health/?$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    # Off unless asked for: with `preload` in the header anyone may submit the domain
    # (and its subdomains) to the browsers' preload list, which takes months to leave.
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    if not SECURE_HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS = ["security.W021"]  # "not preloaded": a choice, not an oversight
CONTENT_SECURITY_POLICY = env.str(
    "CONTENT_SECURITY_POLICY",
    default=(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
)
CONTENT_SECURITY_POLICY_PATHS = ("/admin/", "/dashboard/")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_q",
    "agentfield_site",
    "observability",
    "webhooks",
    "executions",
]

# Under daphne, Django's own classes here run as their subclasses in
# agentfield_site.lib.loop_middleware (hooks on the event loop, not a thread hop
# each); the names stay Django's so its system checks (check --deploy) see them.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "agentfield_site.content_security_policy.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "agentfield_site.lib.api.BodyLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "agentfield_site.urls"
ASGI_APPLICATION = "agentfield_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"].setdefault("TEST", {})
if env.str("TEST_DB_NAME", default=""):
    # Tests that start real processes need a database those processes can open:
    # a file for SQLite, a known name for PostgreSQL.
    DATABASES["default"]["TEST"]["NAME"] = env.str("TEST_DB_NAME")
IS_SQLITE = DATABASES["default"]["ENGINE"].endswith("sqlite3")
IS_POSTGRES = "postgresql" in DATABASES["default"]["ENGINE"]
# Requests one daphne works on at once; the rest wait on the event loop, and past
# REQUEST_QUEUE_TIMEOUT seconds of waiting get a 503 (agentfield_site.lib.concurrency_limit).
# Each runs on one of as many threads (agentfield_site.lib.db_threads) and, while in
# the database, holds a connection. The work is CPU and short database calls: more
# threads than this only share the same cores and the GIL with the event loop, which
# answers heartbeats and streams (the fleet's p99 was about 480 ms with 32, 310 with 8).
MAX_CONCURRENT_REQUESTS = env.int("MAX_CONCURRENT_REQUESTS", default=8)
REQUEST_QUEUE_TIMEOUT = env.float("REQUEST_QUEUE_TIMEOUT", default=10.0)
# Connections are kept, not opened and closed per request: each long-lived thread
# keeps its own on SQLite; on PostgreSQL every process borrows from Django's psycopg
# pool (CONN_POOL, on by default; the django-q2 workers, which fork, run without it).
if IS_SQLITE:
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock
    # at BEGIN so two writers queue on busy_timeout instead of deadlocking.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # None: a thread's connection stays open for as long as the thread lives.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=None)
elif IS_POSTGRES:
    CONN_POOL = env.bool("CONN_POOL", default=True)
    if CONN_POOL:
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("CONN_POOL_MIN_SIZE", default=2),
            "max_size": env.int("CONN_POOL_MAX_SIZE", default=MAX_CONCURRENT_REQUESTS + 8),
            # Waiting longer than this for a connection is an OperationalError: a 503.
            "timeout": env.float("CONN_POOL_TIMEOUT", default=10.0),
        }
        # The pool keeps the connections; Django must hand each back after use.
        DATABASES["default"]["CONN_MAX_AGE"] = 0
    else:
        DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The port `manage.py serve` (`make run`) listens on; the environment wins over .env.
PORT = env.int("PORT", default=8080)
# daphne processes `manage.py serve` runs on that one port (0: one per core).
WEB_PROCESSES = env.int("WEB_PROCESSES", default=0)

# --- Redis: broker, channel layer, cache ----------------------------------
REDIS_URL = env.str("REDIS_URL", default="")

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # A read times out after 15 s, not redis-py 8's default of 5: the layer's
            # receive blocks 5 s on BZPOPMIN, and every idle wake-up listener failed.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                       "prefix": env.str("CHANNEL_PREFIX", default="asgi")},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # No layer: streams fall back to polling the event log (see observability.tail).
    CHANNEL_LAYERS = {}

# Two django-q2 clusters (queues) so that agent calls, which may take
# AGENT_CALL_TIMEOUT, and the long delivery, forwarding and sweeping loops never
# wait for each other's worker slots. `manage.py worker` runs both. (django-q2
# itself reads Q_CLUSTER_NAME to pick the cluster a process serves.)
DISPATCH_CLUSTER = env.str("Q_NAME", default="agentfield")
DELIVERY_CLUSTER = f"{DISPATCH_CLUSTER}-deliveries"
Q_CLUSTER = {
    "name": DISPATCH_CLUSTER,
    "workers": env.int("Q_WORKERS", default=4),
    "timeout": env.int("Q_TIMEOUT", default=300),
    # Must stay above timeout (checked by agentfield.E002), else django-q2 runs a
    # task a second time while the first is still going.
    "retry": env.int("Q_RETRY", default=360),
    "max_attempts": 0,
    "ack_failures": True,
    "catch_up": False,
    "poll": env.float("Q_POLL", default=0.05),
    "guard_cycle": 0.5,
    "save_limit": 1000,
    "label": "Task queue",
    "ALT_CLUSTERS": {
        # The sweeper and the forwarder hold a slot each; the rest send webhooks.
        DELIVERY_CLUSTER: {"workers": env.int("Q_DELIVERY_WORKERS", default=4)},
    },
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Auth, API -------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "admin:login"
# Keys from the environment, comma separated; more are created in the admin.
API_KEYS = env.list("API_KEYS", default=[])
# How long a web process may answer from memory that a key is valid, and in which
# scope, before asking the database again: a key revoked in another process (the
# `apikey` command, another web process's admin) is refused everywhere within this.
API_KEY_CACHE_SECONDS = env.float("API_KEY_CACHE_SECONDS", default=2.0)
# A bearer token for Prometheus on /metrics (besides API keys and staff sessions).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
MAX_BODY_BYTES = env.int("MAX_BODY_BYTES", default=1024 * 1024)
# Seconds a request's body may take to arrive whole (`server_refusals`): past that, 408.
REQUEST_BODY_TIMEOUT = env.float("REQUEST_BODY_TIMEOUT", default=60.0)
# Seconds from a request's first line to the end of its headers (`agentfield_site.server_refusals`).
REQUEST_HEADERS_TIMEOUT = env.float("REQUEST_HEADERS_TIMEOUT", default=30.0)
# About how much of executions' results and errors one list page or batch-status answer carries.
API_PAGE_MAX_BYTES = env.int("API_PAGE_MAX_BYTES", default=8 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["agentfield_site.auth.ApiKeyAuthentication"],
    # Authenticated first (401), then within the key's scope (403); views declare `scopes`.
    "DEFAULT_PERMISSION_CLASSES": ["agentfield_site.auth.HasApiKeyIfConfigured", "agentfield_site.auth.InScope"],
    "DEFAULT_RENDERER_CLASSES": ["agentfield_site.lib.drf_json.SafeJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["agentfield_site.lib.drf_json.StrictJSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "agentfield_site.lib.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AgentField control plane",
    "DESCRIPTION": "AgentField-compatible control-plane API: executions, agent nodes, webhooks, streams.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its docs page follow the API's rule: a key once keys exist.
    "SERVE_PERMISSIONS": ["agentfield_site.auth.HasApiKeyIfConfigured"],
    "SERVE_AUTHENTICATION": ["agentfield_site.auth.ApiKeyAuthentication"],
    # Swagger UI and ReDoc from our own static files: the docs work offline and
    # pin the version we tested (the default loads `@latest` from a CDN).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"ExecutionStatusEnum": "executions.models.STATUSES"},
    # Operations grouped by what follows /api/v1/ (executions, nodes, webhooks, ...),
    # not all under one "v1" tag, and named without the version (`nodes_list`).
    "SCHEMA_PATH_PREFIX": r"/api/(?:ui/)?v1",
    # In the order a newcomer needs them (the docs pages list the groups in this order).
    "TAGS": [
        {"name": "execute", "description": "Submit work to an agent: sync, or async with a webhook for the result."},
        {"name": "executions", "description": "Read, list, cancel and follow executions; agents report status and logs."},
        {"name": "nodes", "description": "Agent nodes: register, heartbeat, shut down, list."},
        {"name": "webhooks", "description": "Subscriptions, the dead letter queue and redrive, destinations."},
        {"name": "settings", "description": "The observability webhook: forward every event to your collector."},
        {"name": "workflow", "description": "Workflow events reported by agents."},
        {"name": "did", "description": "Decentralized identity registration: not supported here (the SDK goes on without)."},
    ],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "agentfield_site.lib.openapi.add_common_errors",
    ],
}

# --- The product's own knobs -------------------------------------------------
AGENT_CALL_TIMEOUT = env.float("AGENT_CALL_TIMEOUT", default=90.0)
# Agent calls run on threads of the dispatch workers, so an agent that takes its
# time holds a thread, not a worker process; and no one node, nor one key's
# executions, gets more than its share of them (executions.dispatch).
AGENT_CALLS_PER_WORKER = env.int("AGENT_CALLS_PER_WORKER", default=16)
AGENT_MAX_CALLS_PER_NODE = env.int("AGENT_MAX_CALLS_PER_NODE", default=8)
AGENT_MAX_CALLS_PER_KEY = env.int("AGENT_MAX_CALLS_PER_KEY", default=32)
AGENT_MAX_NODES_PER_KEY = env.int("AGENT_MAX_NODES_PER_KEY", default=1000)
# A node's reasoners, skills and metadata together, as compact JSON: every node list carries them.
NODE_MAX_DESCRIPTION_BYTES = env.int("NODE_MAX_DESCRIPTION_BYTES", default=256 * 1024)
# Where nodes' base_urls may point beyond public addresses: host names (as spelled)
# or IP addresses and networks (matched against the resolved address). Loopback by
# default, so `make run` and SDK agents on localhost work; add your agents' network
# (e.g. 10.0.0.0/8) when they run elsewhere. See docs/security.md.
AGENT_ALLOWED_HOSTS = env.list("AGENT_ALLOWED_HOSTS", default=["localhost", "127.0.0.0/8", "::1"])
EXECUTION_TIMEOUT = env.float("EXECUTION_TIMEOUT", default=3600.0)
EXECUTION_QUEUE_LIMIT = env.int("EXECUTION_QUEUE_LIMIT", default=10_000)
EXECUTION_QUEUE_LIMIT_PER_KEY = env.int("EXECUTION_QUEUE_LIMIT_PER_KEY", default=EXECUTION_QUEUE_LIMIT // 4)
DISPATCH_LEASE_SECONDS = env.float("DISPATCH_LEASE_SECONDS", default=AGENT_CALL_TIMEOUT + 30)
NODE_OFFLINE_AFTER = env.float("NODE_OFFLINE_AFTER", default=30.0)
IDEMPOTENCY_WINDOW_HOURS = env.int("IDEMPOTENCY_WINDOW_HOURS", default=24)
EVENT_RETENTION_DAYS = env.float("EVENT_RETENTION_DAYS", default=7.0)

# The sweeper: one django-q2 task at a time (a lease guards it) that ticks over
# due retries, expired leases and stale rows for SWEEP_RUN_SECONDS, then hands over.
SWEEP_TICK_SECONDS = env.float("SWEEP_TICK_SECONDS", default=0.5)
SWEEP_RUN_SECONDS = env.float("SWEEP_RUN_SECONDS", default=10.0)
SWEEP_LEASE_SECONDS = env.float("SWEEP_LEASE_SECONDS", default=10.0)

WEBHOOK_RETRY_SCHEDULE = [float(s) for s in env.list("WEBHOOK_RETRY_SCHEDULE", default=["5", "30", "120", "600", "1800"])]
WEBHOOK_TIMEOUT = env.float("WEBHOOK_TIMEOUT", default=10.0)
WEBHOOK_RESPONSE_BODY_LIMIT = env.int("WEBHOOK_RESPONSE_BODY_LIMIT", default=16 * 1024)
WEBHOOK_ALLOWED_HOSTS = env.list("WEBHOOK_ALLOWED_HOSTS", default=[])
# Name servers ("ip" or "ip:port") that webhook and collector host names are
# looked up with (lib/outbound.py); empty: the system's (/etc/resolv.conf).
WEBHOOK_NAMESERVERS = env.list("WEBHOOK_NAMESERVERS", default=[])
WEBHOOK_LEASE_SECONDS = env.float("WEBHOOK_LEASE_SECONDS", default=WEBHOOK_TIMEOUT + 20)
WEBHOOK_BATCH_SIZE = env.int("WEBHOOK_BATCH_SIZE", default=200)
# Requests in flight per sender process (asyncio: each costs a socket, not a thread).
WEBHOOK_CONCURRENCY = env.int("WEBHOOK_CONCURRENCY", default=256)
# Across every worker: requests in flight to one scheme://host:port at most.
WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION = env.int("WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION", default=32)
# Consecutive failed attempts (timeout, connection error, 5xx) that open a destination's breaker.
WEBHOOK_BREAKER_FAILURES = env.int("WEBHOOK_BREAKER_FAILURES", default=5)
# Seconds an open breaker waits before its probe; doubled after each failed probe, up to the max.
WEBHOOK_BREAKER_COOLDOWN = env.float("WEBHOOK_BREAKER_COOLDOWN", default=30.0)
WEBHOOK_BREAKER_MAX_COOLDOWN = env.float("WEBHOOK_BREAKER_MAX_COOLDOWN", default=600.0)
WEBHOOK_DISABLE_AFTER_DAYS = env.float("WEBHOOK_DISABLE_AFTER_DAYS", default=5.0)
# Subscriptions one API key may hold: every event is matched against every enabled one.
WEBHOOK_MAX_SUBSCRIPTIONS_PER_KEY = env.int("WEBHOOK_MAX_SUBSCRIPTIONS_PER_KEY", default=100)

OBSERVABILITY_BATCH_SIZE = env.int("OBSERVABILITY_BATCH_SIZE", default=10)
OBSERVABILITY_FLUSH_INTERVAL = env.float("OBSERVABILITY_FLUSH_INTERVAL", default=1.0)
OBSERVABILITY_RETRY_SCHEDULE = [float(s) for s in env.list("OBSERVABILITY_RETRY_SCHEDULE", default=["1", "5"])]
OBSERVABILITY_TIMEOUT = env.float("OBSERVABILITY_TIMEOUT", default=10.0)
# Consecutive batches in flight at once; the cursor only passes acknowledged ones.
# 1 (the default) = batches arrive strictly in id order, as the contract promises;
# more = throughput, but neighbouring batches may arrive swapped.
OBSERVABILITY_CONCURRENCY = env.int("OBSERVABILITY_CONCURRENCY", default=1)
OBSERVABILITY_LEASE_SECONDS = env.float("OBSERVABILITY_LEASE_SECONDS", default=15.0)
OBSERVABILITY_RUN_SECONDS = env.float("OBSERVABILITY_RUN_SECONDS", default=50.0)

STREAM_KEEPALIVE_SECONDS = env.float("STREAM_KEEPALIVE_SECONDS", default=15.0)
STREAM_POLL_SECONDS = env.float("STREAM_POLL_SECONDS", default=0.25)
STREAM_CLIENT_BUFFER = env.int("STREAM_CLIENT_BUFFER", default=1000)
STREAM_CLIENT_BUFFER_BYTES = env.int("STREAM_CLIENT_BUFFER_BYTES", default=4 * 1024 * 1024)
# Event streams (SSE and sockets) one client key may hold open on one web process.
STREAM_MAX_PER_KEY = env.int("STREAM_MAX_PER_KEY", default=100)
# A streamed response (SSE, the socket) waits while its connection holds more than
# this many bytes its client has not read yet (agentfield_site/lib/backpressure.py).
STREAM_SEND_BUFFER_BYTES = env.int("STREAM_SEND_BUFFER_BYTES", default=256 * 1024)

# --- Static files, i18n, logging ---------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Times to the second in the admin (retries are seconds apart), see agentfield_site/formats.
FORMAT_MODULE_PATH = ["agentfield_site.formats"]

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"without_traceback": {"()": "agentfield_site.lib.logs.WithoutTraceback"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "refusals": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["without_traceback"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # django-q2 logs as "django-q", with a hyphen (not its package name).
        "django-q": {"level": env.str("Q_LOG_LEVEL", default="WARNING")},
        "django.security": {"handlers": ["refusals"], "propagate": False},
    },
}
