"""FLIP on NVFlare: federated training of PyTorch models across hospitals."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flip.platform.base import Platform
    from flip.settings import FlipSettings


def FLIP(settings: "FlipSettings | None" = None) -> "Platform":  # noqa: N802 - the platform's documented name
    """Return the platform of the current environment (``FLIP_ENV``): dev (local files) or prod (the hub).

    The prod platform needs FLIP_HUB_URL and FLIP_HUB_API_KEY on the server only; the server checks them at
    run start (``require_hub``). Sites never hold the key.

    Args:
        settings: settings to use; default: read from the environment.

    Raises:
        SettingsError: a FLIP_* variable is invalid (named in the message).
    """
    from flip.platform.dev import LocalPlatform
    from flip.settings import load_settings

    settings = settings or load_settings()
    if settings.env == "dev":
        return LocalPlatform(settings.local_dir)
    from flip.platform.hub import HubPlatform

    return HubPlatform(settings.hub_url, settings.hub_api_key, settings.local_dir,
                       timeout=settings.hub_timeout, attempts=settings.hub_retries)


__all__ = ["FLIP", "__version__"]
