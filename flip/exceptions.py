"""FLIP's module path for its exception names (FLIP: flip-utils/flip/exceptions.py); every error of ours lives in
flip.errors."""

from __future__ import annotations

from flip.errors import ResultsUploadError

__all__ = ["ResultsUploadError"]
