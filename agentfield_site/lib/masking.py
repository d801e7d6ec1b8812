"""Custom outbound headers are write-only, like secrets: read back as names with masked values.

They often carry credentials (`Authorization: Bearer ...`) for the receiver or the
collector, so the API, the admin and the logs show which headers are set (on
webhooks, subscriptions and the collector configuration), never what they say.
"""

MASK = "***"


def masked_headers(headers: object) -> dict[str, str]:
    """The header names with every value replaced by the mask."""
    return {str(name): MASK for name in headers} if isinstance(headers, dict) else {}


class NothingStored(ValueError):
    """A header sent as the mask where no value is stored under its name."""


def merge_masked(new: dict[str, str], old: dict[str, str]) -> dict[str, str]:
    """An update's headers, where a value sent back as the mask keeps the stored one.

    A client that PUTs back what it read must not overwrite its secrets with "***",
    whatever case it spells the name in (header names are case-insensitive). The
    mask where nothing is stored under that name (a create, a header added, a
    read copied from elsewhere) is refused with `NothingStored`: sent as is, the
    receiver would get "***" in place of the credential it expects.
    """
    stored = {name.lower(): value for name, value in old.items()}
    unknown = sorted(name for name, value in new.items() if value == MASK and name.lower() not in stored)
    if unknown:
        raise NothingStored(
            f"{', '.join(unknown)}: {MASK!r} stands for a value stored earlier, and none is stored under "
            f"{'this name' if len(unknown) == 1 else 'these names'}; send the value itself."
        )
    return {
        name: stored[name.lower()] if value == MASK and name.lower() in stored else value
        for name, value in new.items()
    }
