"""FLIP on NVFlare: federated training of PyTorch models across hospitals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flip.constants import JobType

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flip.exceptions import ResultsUploadError
    from flip.platform.base import Platform
    from flip.platform.flip_api import FLIPBase


def FLIP(job_type: Any = JobType.STANDARD, **kwargs: Any) -> Platform:  # noqa: N802 - the platform's documented name
    """Return the platform of the current environment: dev (local files) or prod (the hub and the trust's services).

    It is FLIP's factory for researchers' apps (``FLIP()``, ``FLIP(job_type="evaluation")``, ``FLIP(JobType.FED_OPT)``:
    every job type gets the same platform, as in FLIP) and flip's own (``FLIP(settings)``, ``FLIP(settings=...)``).
    Dev or prod: ``FLIP_ENV`` (ours) or ``LOCAL_DEV`` (FLIP's), either alone; both set must agree; neither is dev
    (flip.settings.resolve_env). Each call builds a new platform object. The returned object is both our
    :class:`~flip.platform.base.Platform` and FLIP's :class:`~flip.platform.flip_api.FLIPBase`.

    The prod platform needs the hub's URL and internal service key on the server only (``FLIP_API_INTERNAL_URL``,
    ``INTERNAL_SERVICE_KEY`` or ``INTERNAL_SERVICE_KEY_FILE``; ours: ``FLIP_HUB_URL``, ``FLIP_HUB_API_KEY``); the
    server checks them at run start (``require_hub``). Sites never hold the key; they hold their trust's.

    Args:
        job_type: one of ``standard``, ``evaluation``, ``fed_opt``, ``diffusion_model`` (a str or a JobType), or
            flip's settings (a FlipSettings) in this first position.
        settings: (keyword) flip's settings; default: read from the environment.

    Raises:
        ValueError: an unknown job type (names it and the allowed ones).
        TypeError: another keyword argument (FLIP's platforms take none).
        SettingsError: a setting is invalid, or FLIP_ENV and LOCAL_DEV contradict each other (named).
    """
    from flip.settings import FlipSettings, load_settings

    settings = kwargs.pop("settings", None)
    if kwargs:
        raise TypeError(f"FLIP() got unexpected keyword arguments {sorted(kwargs)}: it takes job_type and settings")
    if isinstance(job_type, FlipSettings):
        if settings is not None:
            raise TypeError("FLIP() got settings twice (positional and keyword)")
        settings, job_type = job_type, JobType.STANDARD
    check_job_type(job_type)
    if settings is not None and not isinstance(settings, FlipSettings):
        raise TypeError(f"settings must be a FlipSettings, got {type(settings).__name__}")
    settings = settings or load_settings()
    if settings.env == "dev":
        from flip.platform.dev import LocalPlatform

        return LocalPlatform(settings.local_dir, dev_data=settings.dev_data())
    from flip.platform.hub import HubPlatform

    return HubPlatform(
        settings.hub_url,
        settings.hub_api_key,
        settings.local_dir,
        timeout=settings.hub_timeout,
        attempts=settings.hub_retries,
        key_header=settings.internal_service_key_header,
        key_file=settings.internal_service_key_file,
        user_token=settings.hub_user_token,
        http_hosts=settings.http_hosts,
        settings=settings,
    )


def check_job_type(job_type: Any) -> JobType:
    """Return ``job_type`` as a JobType.

    Raises:
        ValueError: it is not one of FLIP's job types (names it and the allowed values).
    """
    try:
        return JobType(job_type)
    except ValueError:
        allowed = [t.value for t in JobType]
        raise ValueError(f"unknown job_type {job_type!r}: it must be one of {allowed}") from None


def __getattr__(name: str) -> Any:
    """FLIP's other top-level names, imported when first used (``import flip`` stays light)."""
    if name == "FLIPBase":
        from flip.platform.flip_api import FLIPBase

        return FLIPBase
    if name == "ResultsUploadError":
        from flip.errors import ResultsUploadError

        return ResultsUploadError
    raise AttributeError(f"module 'flip' has no attribute {name!r}")


__all__ = ["FLIP", "FLIPBase", "ResultsUploadError", "__version__"]
