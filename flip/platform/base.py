"""The small interface both platforms implement: status, metrics, the safehouse model, a site's data."""

from __future__ import annotations

import re
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from flip.constants import RunStatus

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_path_name(kind: str, value: str) -> str:
    """Return ``value`` if it is safe as one path component (a site name, a job id), else raise ValueError."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"{kind} {value!r} is invalid: expected 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def check_model_id(model_id: Any) -> str:
    """Return the canonical form of ``model_id`` if it is a UUID, else raise ValueError naming it."""
    if isinstance(model_id, str):
        try:
            return str(uuid.UUID(model_id))
        except ValueError:
            pass
    raise ValueError(f"model_id must be a UUID such as '0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90', got {model_id!r}")


class Platform(ABC):
    """What a run needs from the FLIP platform. Implementations must not log or raise secrets."""

    name: str = "platform"

    @abstractmethod
    def report_status(self, model_id: str, run_id: str, status: RunStatus, reason: str | None = None) -> None:
        """Record the run's new status (``reason`` is short and free of tracebacks and secrets)."""

    @abstractmethod
    def report_metrics(self, model_id: str, run_id: str, round_num: int, site: str, metrics: dict[str, Any]) -> None:
        """Record one site's metrics for one round (``site`` may be ``"global"``)."""

    @abstractmethod
    def initial_model_path(self, model_id: str) -> Path | None:
        """Return the safehouse copy of the model's initial weights, or None if there is none."""

    @abstractmethod
    def prepare_site_data(self, site_name: str, job_id: str) -> Path:
        """Fetch the site's cohort images for this run and return the folder that holds them."""

    @abstractmethod
    def site_images_dir(self, site_name: str, job_id: str) -> Path:
        """Return the folder where this run's images live at ``site_name`` (it may not exist)."""

    def require_hub(self) -> None:
        """Check what the server needs to report to this platform (nothing for local files)."""

    @abstractmethod
    def read_statuses(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """The recorded status changes, oldest first (optionally of one model)."""

    @abstractmethod
    def read_metrics(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """The recorded metrics, oldest first (optionally of one model)."""
