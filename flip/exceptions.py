"""FLIP's exception names for researchers' apps (FLIP: flip-utils/flip/exceptions.py); flip's own are in flip.errors."""

from __future__ import annotations

from flip.errors import UploadError


class ResultsUploadError(UploadError):
    """A run's results could not be uploaded: training may have succeeded, the upload did not.

    FLIP reports ``ModelStatus.RESULTS_UPLOAD_FAILED`` for it rather than ``ERROR``.
    """


__all__ = ["ResultsUploadError"]
