from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.db.models.signals import post_delete, post_migrate, post_save

from .lib.loopback import is_loopback


class AgentfieldSiteConfig(AppConfig):
    name = "agentfield_site"
    verbose_name = "Access"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from . import schema  # noqa: F401 - registers the OpenAPI auth extension

        checks.register(check_settings, checks.Tags.security)
        # The sweeper (agentfield_site.jobs): a worker that starts kicks it; migrate schedules it.
        post_spawn.connect(_on_worker_start, dispatch_uid="agentfield_site.jobs.sweeper.kick")
        post_migrate.connect(_on_migrate, sender=self)
        # A key edited or reissued here is looked up afresh (revocations by update call forget_keys).
        post_save.connect(_forget_keys, sender="agentfield_site.ApiKey", dispatch_uid="agentfield_site.auth.forget")
        post_delete.connect(_forget_keys, sender="agentfield_site.ApiKey", dispatch_uid="agentfield_site.auth.forget")


def _on_worker_start(sender, proc_name: str, **kwargs) -> None:
    from .jobs import sweeper

    sweeper.kick(after_restart=True)


def _forget_keys(sender, **kwargs) -> None:
    from .auth import forget_keys

    forget_keys()


def _on_migrate(sender, **kwargs) -> None:
    from .jobs import sweeper

    sweeper.ensure_schedule()


def check_settings(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """Refuse configurations that would run but misbehave."""
    errors: list[checks.CheckMessage] = []
    q = settings.Q_CLUSTER
    if q.get("retry", 0) <= q.get("timeout", 0):
        errors.append(
            checks.Error(
                "Q_CLUSTER retry must be larger than timeout.",
                hint="Otherwise django-q2 hands a running task to a second worker (Q_RETRY > Q_TIMEOUT).",
                id="agentfield.E002",
            )
        )
    layer = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    if not settings.DEBUG and layer.endswith("InMemoryChannelLayer"):
        errors.append(
            checks.Warning(
                "The in-memory channel layer reaches only the process that wrote to it.",
                hint="Set REDIS_URL to use channels-redis across processes.",
                id="agentfield.W001",
            )
        )
    if settings.SWEEP_LEASE_SECONDS <= settings.SWEEP_TICK_SECONDS:
        errors.append(
            checks.Error(
                "SWEEP_LEASE_SECONDS must be larger than SWEEP_TICK_SECONDS.",
                id="agentfield.E003",
            )
        )
    # A sweeper task may first wait out a killed one's lease (two at most), then run its turn.
    if settings.SWEEP_RUN_SECONDS + 2 * settings.SWEEP_LEASE_SECONDS >= q.get("timeout", 0):
        errors.append(
            checks.Error(
                "SWEEP_RUN_SECONDS plus twice SWEEP_LEASE_SECONDS must be below the django-q2 task timeout.",
                id="agentfield.E004",
            )
        )
    if settings.MAX_CONCURRENT_REQUESTS < 1:
        errors.append(checks.Error("MAX_CONCURRENT_REQUESTS must be at least 1.", id="agentfield.E005"))
    if settings.REQUEST_QUEUE_TIMEOUT < 0:
        errors.append(checks.Error("REQUEST_QUEUE_TIMEOUT must be 0 (no limit) or more seconds.", id="agentfield.E008"))
    if settings.DISPATCH_LEASE_SECONDS <= settings.AGENT_CALL_TIMEOUT:
        errors.append(
            checks.Warning(
                "DISPATCH_LEASE_SECONDS is not above AGENT_CALL_TIMEOUT: a call still going when its lease "
                "lapses is taken for lost, and the agent is sent the execution a second time.",
                hint="Leave DISPATCH_LEASE_SECONDS unset (AGENT_CALL_TIMEOUT + 30) or set it above AGENT_CALL_TIMEOUT.",
                id="agentfield.W004",
            )
        )
    threads = q.get("workers", 1) * settings.AGENT_CALLS_PER_WORKER
    if settings.AGENT_MAX_CALLS_PER_KEY >= threads:
        errors.append(
            checks.Warning(
                f"AGENT_MAX_CALLS_PER_KEY ({settings.AGENT_MAX_CALLS_PER_KEY}) lets one key's executions take "
                f"every agent call thread of a worker machine ({threads}).",
                hint="Keep it below Q_WORKERS × AGENT_CALLS_PER_WORKER, so that a key whose agents hang "
                "leaves threads for everyone else.",
                id="agentfield.W003",
            )
        )
    errors.extend(_loopback_reachable_from_the_network())
    return errors


def _loopback_reachable_from_the_network() -> list[checks.CheckMessage]:
    if is_loopback(settings.HOST):
        return []
    warnings = []
    for name in ("WEBHOOK_ALLOWED_HOSTS", "AGENT_ALLOWED_HOSTS"):
        loopback = [host for host in getattr(settings, name, []) if is_loopback(host)]
        if loopback:
            warnings.append(
                checks.Warning(
                    f"{name} allows loopback ({', '.join(loopback)}) while the server listens on {settings.HOST}.",
                    hint="Anyone who can reach the server can then make it POST to services listening "
                    "on this machine only. Remove those hosts, or set HOST=127.0.0.1.",
                    id="agentfield.W002",
                )
            )
    return warnings
