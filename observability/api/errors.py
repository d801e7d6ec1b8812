"""How the API answers the forwarder's refusals: the one place they become HTTP."""

from agentfield_site.lib.api import ApiError, translates

from ..forwarder import configuration, dead_letters


@translates(configuration.ConfigError)
def _config_error(exc: configuration.ConfigError) -> ApiError:
    return ApiError(400, "bad_request", str(exc))


@translates(dead_letters.NotConfigured)
def _not_configured(exc: dead_letters.NotConfigured) -> ApiError:
    return ApiError(409, "not_configured", str(exc))


@translates(dead_letters.AlreadyRedriving)
def _already_redriving(exc: dead_letters.AlreadyRedriving) -> ApiError:
    return ApiError(409, "conflict", str(exc))
