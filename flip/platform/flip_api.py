"""FLIP's data and reporting API (FLIP: flip-utils/flip/core/base.py), which researchers' apps call on ``FLIP()``.

:class:`FLIPBase` is FLIP's interface: its abstract methods and its four type checks, and a ``logger``. Our two
platforms implement it beside our own :class:`flip.platform.base.Platform`: the dev platform
(:class:`flip.platform.dev.LocalPlatform`) from local files, the prod platform (:class:`flip.platform.hub.HubPlatform`)
through the trust's services and FLIP's hub. Role split as in FLIP: apps at a site call ``get_dataframe``,
``get_by_accession_number`` and ``add_resource``; the server's components call the reporting methods.

Nothing here logs a dataframe's contents, an accession id in clear (:meth:`Utils.hash_for_log` instead) or a secret.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flip.checks import check_path_name
from flip.constants import ModelStatus, ResourceType
from flip.errors import CohortValueError

if TYPE_CHECKING:
    import pandas as pd

#: the column every cohort dataframe has (FLIP's contract with apps; the imaging service's key for the images)
ACCESSION_COLUMN = "accession_id"


class FLIPBase(ABC):
    """FLIP's platform interface: cohort data at a site, status/metrics/logs to the hub, results upload, cleanup."""

    @cached_property
    def logger(self) -> logging.Logger:
        """The platform's logger (``flip.platform.<class name>``): FLIP apps and ``send_metrics_value`` write to it."""
        return logging.getLogger(f"flip.platform.{type(self).__name__}")

    # -- FLIP's type checks ---------------------------------------------------------------------------------
    def check_query(self, query: Any) -> None:
        """Raise TypeError unless ``query`` is a str."""
        _require_str("query", query)

    def check_project_id(self, project_id: Any) -> None:
        """Raise TypeError unless ``project_id`` is a str."""
        _require_str("project_id", project_id)

    def check_accession_id(self, accession_id: Any) -> None:
        """Raise TypeError unless ``accession_id`` is a str."""
        _require_str("accession_id", accession_id)

    def check_resource_type(self, resource_type: Any) -> list[ResourceType]:
        """Return ``resource_type`` as a list: a ResourceType, or a list of them (a plain str or a tuple is refused).

        Raises:
            TypeError: anything else (names what was given).
        """
        if isinstance(resource_type, ResourceType):
            return [resource_type]
        if isinstance(resource_type, list):
            wrong = [r for r in resource_type if not isinstance(r, ResourceType)]
            if wrong:
                raise TypeError(
                    f"every item of resource_type must be a ResourceType, got {wrong[0]!r} ({type(wrong[0]).__name__})"
                )
            return resource_type
        raise TypeError(
            f"resource_type must be a ResourceType or a list of ResourceType, got {resource_type!r} "
            f"({type(resource_type).__name__})"
        )

    def checked_accession_id(self, accession_id: Any) -> str:
        """Return ``accession_id`` if it is a str that is one safe path component (it names a folder).

        Raises:
            TypeError: not a str (FLIP's check).
            CohortValueError: (a ValueError) empty, ``.``/``..``, a path (``../x``, ``/etc``), a newline or another
                character outside letters, digits, ``.``, ``_``, ``-`` (names the value; it never leaves the site).
        """
        self.check_accession_id(accession_id)
        try:
            return check_path_name("accession id", accession_id)
        except ValueError as exc:
            raise CohortValueError(f"{exc} (an accession id names one folder)") from None

    # -- sites: the cohort ----------------------------------------------------------------------------------
    @abstractmethod
    def get_dataframe(self, project_id: str, query: str) -> pd.DataFrame:
        """Return the cohort of ``query`` in project ``project_id``; it has an ``accession_id`` column."""

    @abstractmethod
    def get_by_accession_number(
        self, project_id: str, accession_id: str, resource_type: ResourceType | list[ResourceType] = ResourceType.NIFTI
    ) -> Path:
        """Return the folder holding the images of ``accession_id`` (the requested resource types)."""

    @abstractmethod
    def add_resource(
        self, project_id: str, accession_id: str, scan_id: str, resource_id: str, files: list[str]
    ) -> None:
        """Add files (e.g. a segmentation) to an accession's scan in the trust's imaging store."""

    # -- the server: reports to the hub ---------------------------------------------------------------------
    @abstractmethod
    def update_status(self, model_id: str, new_model_status: ModelStatus) -> None:
        """Set the model's status on the hub."""

    @abstractmethod
    def send_metrics(self, client_name: str, model_id: str, label: str, value: float, round: int) -> None:
        """Send one metric value of a site (``client_name``) to the hub."""

    @abstractmethod
    def send_handled_exception(self, formatted_exception: str, client_name: str | None, model_id: str) -> None:
        """Send a training failure's text to the hub (``client_name`` None: the model's, not a site's)."""

    @abstractmethod
    def send_event(
        self,
        model_id: str,
        event_type: Any,
        global_round: int,
        client_name: str | None = None,
        details: dict[str, Any] | None = None,
        success: bool = True,
    ) -> None:
        """Send a round-progress event to the hub (FLIP's newest interface)."""

    @abstractmethod
    def upload_results_to_s3(self, results_folder: Path, model_id: str) -> None:
        """Upload a run's results folder (raises ResultsUploadError on failure)."""

    @abstractmethod
    def cleanup(self, path: Path) -> None:
        """Delete a run's local files."""


def _require_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


# -- FLIP's hub schemas (flip-api domain/schemas/private.py, newest): the bodies flip sends, checked in one place ------
#: the typed events the FL side may send (the hub's QUEUE_POSITION is its own)
SENDABLE_EVENTS = ("ROUND_STARTED", "CLIENT_RESULT_RECEIVED", "ROUND_AGGREGATED")
#: the largest round FLIP's hub stores (a Postgres integer)
MAX_ROUND = 2_147_483_647
#: the longest free text flip sends in a training log
MAX_LOG_TEXT = 2000


def _finite(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _client(name: Any) -> str | None:
    if name is None:
        return None
    if not (isinstance(name, str) and name and len(name) <= 255 and name.isprintable()):
        raise ValueError(
            f"fl_client_name must be a non-empty printable string of at most 255 characters or None, got {name!r}"
        )
    return name


def training_metrics(client_name: Any, global_round: Any, label: Any, result: Any) -> dict[str, Any]:
    """FLIP's ``TrainingMetrics`` body: one metric of one client in one round.

    Raises:
        ValueError: a name that is not a non-empty printable string (<= 255), a round that is not an integer >= 0,
            or a result that is not a finite number (FLIP's hub would store NaN; flip never sends one).
    """
    client = _client(client_name)
    if client is None:
        raise ValueError("fl_client_name is required for a metric (the hub attributes it to the client's trust)")
    if not (isinstance(label, str) and label and len(label) <= 255 and label.isprintable()):
        raise ValueError(f"label must be a non-empty printable string of at most 255 characters, got {label!r}")
    if not (isinstance(global_round, int) and not isinstance(global_round, bool) and 0 <= global_round <= MAX_ROUND):
        raise ValueError(f"global_round must be an integer from 0 to {MAX_ROUND}, got {global_round!r}")
    if not _finite(result):
        raise ValueError(f"result of {label!r} must be a finite number, got {result!r}")
    return {"fl_client_name": client, "global_round": global_round, "label": label, "result": float(result)}


def training_log(
    *,
    client_name: Any = None,
    text: Any = None,
    event_type: Any = None,
    global_round: Any = None,
    details: Any = None,
    success: bool = True,
) -> dict[str, Any]:
    """FLIP's ``TrainingLog`` body: free text xor a typed round event (rounds 1-based).

    Raises:
        ValueError: both or neither of text and event, an event flip does not send, an event without a round in
            1..MAX_ROUND, free text with a round, text that is empty or longer than MAX_LOG_TEXT, details that are
            not an object of JSON values, or success that is not a bool (each named).
    """
    if (text is None) == (event_type is None):
        raise ValueError("a training log is free text or a typed event, exactly one of them")
    if not isinstance(success, bool):
        raise ValueError(f"success must be a bool, got {success!r}")
    body: dict[str, Any] = {
        "fl_client_name": _client(client_name),
        "log": None,
        "event_type": None,
        "global_round": None,
        "details": None,
        "success": success,
    }
    if text is not None:
        if not (isinstance(text, str) and text.strip() and len(text) <= MAX_LOG_TEXT):
            raise ValueError(f"log text must be a non-empty string of at most {MAX_LOG_TEXT} characters")
        if global_round is not None or details is not None:
            raise ValueError("a free-text log carries no round and no details (FLIP: those belong to typed events)")
        body["log"] = text
        return body
    event = getattr(event_type, "value", event_type)
    if event not in SENDABLE_EVENTS:
        raise ValueError(f"event_type must be one of {list(SENDABLE_EVENTS)}, got {event_type!r}")
    if not (isinstance(global_round, int) and not isinstance(global_round, bool) and 1 <= global_round <= MAX_ROUND):
        raise ValueError(
            f"global_round of a {event} event must be an integer from 1 to {MAX_ROUND} (rounds are "
            f"1-based), got {global_round!r}"
        )
    if details is not None:
        from flip.errors import JSONValueError
        from flip.files import to_json

        if not isinstance(details, dict) or not all(isinstance(k, str) for k in details):
            raise ValueError(f"details must be an object with string keys or None, got {type(details).__name__}")
        try:
            to_json(details)
        except (JSONValueError, TypeError) as exc:
            raise ValueError(f"details of a {event} event are not JSON: {exc}") from None
    body.update(event_type=event, global_round=global_round, details=details)
    return body
