"""The development platform: everything is a local file under ``FLIP_LOCAL_DIR``.

Layout::

    <local_dir>/status.jsonl                      one JSON line per status change
    <local_dir>/metrics.jsonl                     one JSON line per (round, site) metrics
    <local_dir>/safehouse/<model_id>/initial_model.pt
    <local_dir>/cohorts/<site>/...                each hospital's source images (its "PACS")
    <local_dir>/images/<site>/<job_id>/...        images fetched for one run (deleted by CleanupImages)
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from flip.constants import RunStatus
from flip.errors import JSONValueError, PlatformError
from flip.files import to_json
from flip.checks import check_path_name
from flip.platform.base import Platform

STATUS_FILE = "status.jsonl"
METRICS_FILE = "metrics.jsonl"
READY_MARKER = ".flip_ready"


class LocalPlatform(Platform):
    """Dev platform over local files (see module docstring for the layout)."""

    name = "dev"
    _lock = threading.Lock()

    def __init__(self, local_dir: str | Path):
        self.local_dir = Path(local_dir).expanduser().resolve()

    # status and metrics -------------------------------------------------------------------------
    def _append(self, file_name: str, record: dict[str, Any]) -> None:
        path = self.local_dir / file_name
        try:
            line = to_json(record, sort_keys=True) + "\n"
        except JSONValueError as exc:
            raise PlatformError(f"not recorded in {file_name}: {exc}") from exc
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, open(path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:
            raise PlatformError(f"cannot write {path}: {exc.strerror}") from exc

    def report_status(self, model_id: str, run_id: str, status: RunStatus, reason: str | None = None) -> None:
        record = {"time": time.time(), "model_id": model_id, "run_id": run_id, "status": RunStatus(status).value}
        if reason:
            record["reason"] = reason
        self._append(STATUS_FILE, record)

    def report_metrics(self, model_id: str, run_id: str, round_num: int, site: str, metrics: dict[str, Any]) -> None:
        record = {"time": time.time(), "model_id": model_id, "run_id": run_id, "round": round_num, "site": site}
        record["metrics"] = metrics
        self._append(METRICS_FILE, record)

    def read_statuses(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Return the recorded status changes, oldest first (optionally of one model)."""
        return [r for r in _read_jsonl(self.local_dir / STATUS_FILE) if model_id in (None, r.get("model_id"))]

    def read_metrics(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Return the recorded metrics, oldest first (optionally of one model)."""
        return [r for r in _read_jsonl(self.local_dir / METRICS_FILE) if model_id in (None, r.get("model_id"))]

    # models and data ----------------------------------------------------------------------------
    def _safehouse_path(self, model_dir: str) -> Path:
        """Return ``<local_dir>/safehouse/<model_dir>/initial_model.pt`` (``model_dir`` checked by the caller)."""
        return self.local_dir / "safehouse" / model_dir / "initial_model.pt"

    def initial_model_path(self, model_id: str) -> Path | None:
        path = self._safehouse_path(check_path_name("model id", model_id))
        return path if path.is_file() else None

    def cohort_dir(self, site_name: str) -> Path:
        return self.local_dir / "cohorts" / check_path_name("site name", site_name)

    def site_images_dir(self, site_name: str, job_id: str) -> Path:
        return self.local_dir / "images" / check_path_name("site name", site_name) / check_path_name("job id", job_id)

    def prepare_site_data(self, site_name: str, job_id: str) -> Path:
        target = self.site_images_dir(site_name, job_id)
        if (target / READY_MARKER).is_file():
            return target
        source = self.cohort_dir(site_name)
        if not source.is_dir():
            raise PlatformError(f"no cohort for site {site_name!r}: expected images under {source}")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(source, staging)
            (staging / READY_MARKER).write_text(json.dumps({"source": str(source), "time": time.time()}))
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise PlatformError(f"cannot fetch the cohort of site {site_name!r} into {target}: {exc.strerror}") from exc
        return target


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
