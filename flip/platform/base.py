"""The small interface both platforms implement: status, metrics, round events and failures, the safehouse model,
a site's data."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from flip.constants import RunStatus


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
    def report_event(
        self,
        model_id: str,
        run_id: str,
        event: str,
        round_num: int,
        site: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record a round event (FLIP's ``ROUND_STARTED``, ``CLIENT_RESULT_RECEIVED``, ``ROUND_AGGREGATED``;
        ``round_num`` 1-based; ``site`` None: the server's own)."""

    @abstractmethod
    def report_failure(self, model_id: str, run_id: str, site: str | None, reason: str) -> None:
        """Record a failure of ``site`` (None: the run's): ``reason`` is short, no traceback, secret or data value."""

    @abstractmethod
    def initial_model_path(self, model_id: str) -> Path | None:
        """Return the safehouse copy of the model's initial weights, or None if there is none."""

    @abstractmethod
    def prepare_site_data(self, site_name: str, job_id: str) -> Path:
        """Fetch the site's cohort images for this run and return the folder that holds them."""

    @abstractmethod
    def site_images_dir(self, site_name: str, job_id: str) -> Path:
        """Return the folder where this run's images live at ``site_name`` (it may not exist)."""

    def require_hub(self) -> None:  # noqa: B027 (a hook: a platform without a hub needs nothing)
        """Check what the server needs to report to this platform (nothing for local files)."""

    @abstractmethod
    def read_statuses(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """The recorded status changes, oldest first (optionally of one model)."""

    @abstractmethod
    def read_metrics(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """The recorded metrics, oldest first (optionally of one model)."""

    @abstractmethod
    def read_logs(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """The recorded round events and failures, oldest first (optionally of one model): ``time``, ``site``,
        ``round``, ``text`` (a failure's reason or an event's name) and ``success``."""

    def undelivered(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Final statuses recorded but not delivered (none where recording cannot fail to deliver)."""
        return []

    def resend(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Deliver the undelivered final statuses again; return those delivered (none here)."""
        return []
