"""The forwarder's configuration: validation, the one collector it sends to, and its status document."""

import time
from collections.abc import Sequence

from django.db import transaction
from django.db.models import Max

from agentfield_site.lib import outbound
from agentfield_site.lib.masking import NothingStored, masked_headers, merge_masked
from agentfield_site.lib.timefmt import iso

from ..models import ForwarderConfig, ForwarderDeadLetter, ForwarderState, PlatformEvent
from ..type_patterns import MAX_PATTERNS, pattern_problem, type_regex

# `on_commit` checks the configuration this long per process.
CONFIG_CACHE_SECONDS = 1.0

ALL_TYPES = ["*"]


class ConfigError(ValueError):
    """A configuration the forwarder refuses; the message says why, for a 400."""


def validate_headers(value: object) -> dict[str, str]:
    """Custom headers, by the rules every outbound request follows (`outbound.clean_headers`)."""
    try:
        return outbound.clean_headers(value)
    except outbound.InvalidTarget as exc:
        raise ConfigError(f"{exc}.") from exc


def validate_event_types(value: object) -> list[str]:
    """Type patterns (`execution.*`, `node.online`, `*`); omitted means every event."""
    if value is None:
        return list(ALL_TYPES)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            'event_types must be a list of event type patterns, e.g. ["execution.*"].'
        )
    if not value:
        raise ConfigError(
            "event_types must list at least one pattern; omit it to forward every event."
        )
    if len(value) > MAX_PATTERNS:  # as a subscription's and a stream filter's
        raise ConfigError(f"event_types may hold at most {MAX_PATTERNS} patterns.")
    for pattern in value:
        if problem := pattern_problem(pattern):
            raise ConfigError(problem)
    return list(dict.fromkeys(value))


def validate_url(value: object) -> str:
    try:
        return outbound.clean_url(value)
    except outbound.InvalidTarget as exc:
        raise ConfigError(f"url is not allowed: {exc}.") from exc


def validate_secret(value: object) -> str | None:
    """None keeps the stored secret; '' removes it."""
    if value is None:
        return None
    try:
        return outbound.clean_secret(value)
    except outbound.InvalidTarget as exc:
        raise ConfigError(f"{exc}.") from exc


def check_masked(headers: dict[str, str]) -> None:
    """ConfigError when a header is sent masked and the stored configuration has no value under its name."""
    config = ForwarderConfig.objects.filter(pk=ForwarderConfig.SINGLETON_ID).first()
    try:
        merge_masked(headers, (config.headers or {}) if config is not None else {})
    except NothingStored as exc:
        raise ConfigError(str(exc)) from None


def configure(
    *,
    url: str,
    secret: str | None,
    headers: dict[str, str],
    enabled: bool,
    event_types: list[str],
) -> ForwarderConfig:
    """Create or replace the collector configuration; `secret=None` keeps the old secret.

    A new configuration forwards events from now on: the cursor starts at the
    newest event, so a collector is not flooded with the whole retained log.
    """
    with transaction.atomic():
        config = (
            ForwarderConfig.objects.select_for_update()
            .filter(pk=ForwarderConfig.SINGLETON_ID)
            .first()
        )
        created = config is None
        if created:
            config = ForwarderConfig(pk=ForwarderConfig.SINGLETON_ID)
        config.url = url
        if secret is not None:
            config.secret = secret
        # Values sent back as read (masked) keep the stored ones (`check_masked` refused the rest).
        try:
            config.headers = merge_masked(headers, config.headers or {})
        except NothingStored as exc:  # the configuration changed since it was checked
            raise ConfigError(str(exc)) from None
        config.enabled = enabled
        config.event_types = event_types
        config.save()
        if created:
            newest = PlatformEvent.objects.aggregate(m=Max("id"))["m"] or 0
            ForwarderState.objects.update_or_create(
                pk=ForwarderState.SINGLETON_ID,
                defaults={"cursor": newest, "last_error": "", "last_error_at": None},
            )
    forget_cached_config()
    return config


def unconfigure() -> bool:
    """Remove the configuration; forwarding stops. True when there was one."""
    deleted = ForwarderConfig.objects.filter(pk=ForwarderConfig.SINGLETON_ID).delete()[0]
    forget_cached_config()
    return bool(deleted)


def config_document(config: ForwarderConfig) -> dict:
    """The contract's `config` object: never the secret, only whether there is one; header values masked."""
    return {
        "url": config.url,
        "has_secret": bool(config.secret),
        "headers": masked_headers(config.headers),
        "enabled": config.enabled,
        "event_types": config.event_types,
        "created_at": iso(config.created_at),
        "updated_at": iso(config.updated_at),
    }


def forwarded_types_regex(patterns: Sequence[str]) -> str | None:
    """The regex of the forwarded types, None when every type is forwarded (no regex to run)."""
    return None if not patterns or "*" in patterns else type_regex(patterns)


def status() -> dict:
    """The contract's `/status` document."""
    config = ForwarderConfig.current()
    state = ForwarderState.get()
    events = PlatformEvent.objects.filter(id__gt=state.cursor)
    regex = forwarded_types_regex(config.event_types) if config else None
    if regex:
        events = events.filter(type__regex=regex)
    return {
        "enabled": bool(config and config.enabled),
        "webhook_url": config.url if config else None,
        "backlog": events.count() if config else 0,
        "cursor": state.cursor,
        "events_forwarded": state.events_forwarded,
        "dead_letter_count": ForwarderDeadLetter.objects.count(),
        "last_forwarded_at": iso(state.last_forwarded_at),
        "last_error": state.last_error or None,
        "last_error_at": iso(state.last_error_at),
    }


_cache = {"until": 0.0, "enabled": False}


def forget_cached_config() -> None:
    _cache["until"] = 0.0


def enabled_cached() -> bool:
    """Whether forwarding is on, asked of the database at most every CONFIG_CACHE_SECONDS."""
    now = time.monotonic()
    if now >= _cache["until"]:
        _cache["enabled"] = ForwarderConfig.objects.filter(enabled=True).exists()
        _cache["until"] = now + CONFIG_CACHE_SECONDS
    return _cache["enabled"]
