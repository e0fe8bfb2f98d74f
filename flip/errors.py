"""Errors flip raises. Each names the bad value and what is allowed; none carries a secret."""

from __future__ import annotations


class FlipError(Exception):
    """Base of every error flip raises on purpose."""


class SettingsError(FlipError, ValueError):
    """A FLIP_* setting is missing or invalid; the message names the environment variable."""


class PlatformError(FlipError):
    """The platform (dev files or the prod hub) could not do what was asked."""


class TrustServiceError(PlatformError):
    """A trust's data-access or imaging service could not give what a site asked for (the message names the
    service, the call and the cause; never a key, a query's rows or an answer's body)."""


class StatusNotDelivered(PlatformError):
    """The hub did not take a final status; it is recorded on the server for ``flip status --resend``.

    Attributes:
        recorded: the file that holds the record.
    """

    def __init__(self, message: str, recorded=None):
        super().__init__(message)
        self.recorded = recorded


class UserCodeError(FlipError):
    """The user's code in the job's custom/ folder is missing, malformed or returned something unusable."""


class PrivacyError(FlipError, ValueError):
    """A privacy filter could not do its job; the update must not be shared."""


class DPModelError(PrivacyError):
    """A model Opacus cannot train with DP-SGD (the message names the layer and the fix, flip.privacy.fix_model)."""


class BudgetRefused(PrivacyError):
    """A job would spend more ε than the site has left for a data set (the message names what is left)."""


class StorageError(FlipError):
    """Base of S3 storage errors."""


class UploadError(StorageError):
    """An upload to S3 did not complete."""


class VerificationError(StorageError):
    """What is in S3 does not match the run's manifest."""


class RegistryError(FlipError):
    """The model registry cannot serve what was asked (unknown model, no verified run, bad artifact)."""


class CleanupError(FlipError):
    """The workspace could not be cleaned (or a path to delete was refused)."""


class JSONValueError(FlipError, ValueError):
    """A value cannot be written as strict JSON (NaN, Infinity, or not a JSON type); the message names the key."""


class NonFiniteModelError(FlipError, ValueError):
    """A model (an aggregate, the global model) holds NaN/Inf or values its dtype cannot hold: it is never saved as
    the run's model nor uploaded."""


class SiteMessageError(FlipError, ValueError):
    """A value a site sent is not what a site may send; the message names the field, never the value."""


class LookupFailed(FlipError):
    """A peer component is missing or of the wrong type (the message names the id and the type found)."""


class AggregationFailed(FlipError):
    """Too few updates passed the checks for the round to complete."""


class CohortValueError(FlipError, ValueError):
    """A value of the cohort (an accession id) is refused; the message names it, so it stays at the site: what
    leaves the site for it is only the error's type (flip.nvflare.executors.user_code.describe_failure)."""


class TaskFailed(FlipError):
    """A task cannot complete at a site; ``reason`` is short and safe to send to the server."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ResultsUploadError(UploadError):
    """A run's results could not be uploaded: training may have succeeded, the upload did not (FLIP's name, which
    FLIP apps import from ``flip`` or ``flip.exceptions``; FLIP reports ``RESULTS_UPLOAD_FAILED`` for it)."""


class MetricDropped(FlipError, ValueError):
    """A metrics event the server does not take; the message is the reason and names the site."""


class AppError(FlipError, ValueError):
    """An app folder cannot be bundled as a job (``flip job create``): a required file is missing, config.json or a
    value in it is not what the job type needs. The message names the file or key and what is expected."""


class ApiError(FlipError):
    """A request the FL API service (``flip api serve``) refuses or cannot serve. The message is short, names the
    value and what is allowed, and is sent to the caller as ``{"detail": message}`` with HTTP ``status``; it never
    holds a secret, a URL's query string or a traceback.

    Attributes:
        status: the HTTP status answered (400 bad input, 401 no key, 404 unknown job or folder, 502 the FL server).
    """

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class BundleHostError(ApiError):
    """A bundle host (the hub's S3, through a pre-signed link) failed, could not be reached or redirected: 502."""

    status = 502


class BundleTooLarge(ApiError):
    """A bundle link's answer is larger than what the bundle's bound leaves."""


class FlareError(ApiError):
    """The FL server, through NVFlare's FLARE API, failed or could not be reached (HTTP 502 with the short cause)."""

    status = 502


class SerializationStateError(FlipError, RuntimeError):
    """This process cannot start the simulator: its NVFlare serialization registry would drop a Shareable's headers."""
