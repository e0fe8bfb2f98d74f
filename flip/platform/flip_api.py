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
from flip.errors import CohortValueError
from flip.constants import ModelStatus, ResourceType

if TYPE_CHECKING:
    import pandas as pd


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
                raise TypeError(f"every item of resource_type must be a ResourceType, got {wrong[0]!r} "
                                f"({type(wrong[0]).__name__})")
            return resource_type
        raise TypeError(f"resource_type must be a ResourceType or a list of ResourceType, got {resource_type!r} "
                        f"({type(resource_type).__name__})")

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
    def get_by_accession_number(self, project_id: str, accession_id: str,
                                resource_type: ResourceType | list[ResourceType] = ResourceType.NIFTI) -> Path:
        """Return the folder holding the images of ``accession_id`` (the requested resource types)."""

    @abstractmethod
    def add_resource(self, project_id: str, accession_id: str, scan_id: str, resource_id: str,
                     files: list[str]) -> None:
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
    def send_event(self, model_id: str, event_type: Any, global_round: int, client_name: str | None = None,
                   details: dict[str, Any] | None = None, success: bool = True) -> None:
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
