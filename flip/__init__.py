"""FLIP on NVFlare: federated training of PyTorch models across hospitals."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flip.platform.base import Platform
    from flip.settings import FlipSettings


def FLIP(settings: "FlipSettings | None" = None) -> "Platform":  # noqa: N802 - the platform's documented name
    """Return the platform of the current environment (``FLIP_ENV``).

    Args:
        settings: settings to use; default: read from the environment.

    Raises:
        SettingsError: a FLIP_* variable is missing or invalid (named in the message).
        PlatformError: the environment's platform is not available.
    """
    from flip.errors import PlatformError
    from flip.platform.dev import LocalPlatform
    from flip.settings import load_settings

    settings = settings or load_settings()
    if settings.env == "dev":
        return LocalPlatform(settings.local_dir)
    raise PlatformError(
        "FLIP_ENV=prod: the production platform (the FLIP hub's HTTP API) is not available in this version "
        "of flip; use FLIP_ENV=dev (local files under FLIP_LOCAL_DIR)"
    )


__all__ = ["FLIP", "__version__"]
