"""``Utils``: FLIP's small static helpers (FLIP: flip-utils/flip/utils/utils.py)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

#: hex characters of a log fingerprint
HASH_LENGTH = 12


class Utils:
    """Static helpers FLIP apps and components use."""

    @staticmethod
    def is_valid_uuid(val: Any) -> bool:
        """Return True if ``str(val)`` parses as a UUID (hyphenless, braces and ``urn:uuid:`` forms included)."""
        try:
            uuid.UUID(str(val))
        except ValueError:
            return False
        return True

    @staticmethod
    def is_string_empty(val: str) -> bool:
        """Return True if ``val`` is empty or only whitespace."""
        return val.strip() == ""

    @staticmethod
    def hash_for_log(value: Any) -> str:
        """Return a short fingerprint of a sensitive value (an accession id) to log instead of the value.

        The fingerprint is the first 12 hex characters of the SHA-256 of ``str(value)`` with its whitespace runs
        collapsed to one space, stripped and lower-cased, so whoever holds the value can find its log lines and
        nobody else can read it from them.
        """
        normalised = " ".join(str(value).lower().split())
        return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:HASH_LENGTH]
