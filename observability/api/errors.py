"""How the API answers the forwarder's refusals: the one place they become HTTP."""

from agentfield_site.lib.api import ApiError, translates

from .. import forwarder


@translates(forwarder.ConfigError)
def _config_error(exc: forwarder.ConfigError) -> ApiError:
    return ApiError(400, "bad_request", str(exc))


@translates(forwarder.NotConfigured)
def _not_configured(exc: forwarder.NotConfigured) -> ApiError:
    return ApiError(409, "not_configured", str(exc))
