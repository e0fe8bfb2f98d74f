"""The development platform: everything is a local file under ``FLIP_LOCAL_DIR``.

Layout::

    <local_dir>/status.jsonl                      one JSON line per status change
    <local_dir>/metrics.jsonl                     one JSON line per (round, site) metrics
    <local_dir>/logs.jsonl                        one JSON line per round event or failure (FLIP's training log)
    <local_dir>/safehouse/<model_id>/initial_model.pt
    <local_dir>/cohorts/<site>/...                each hospital's source images (its "PACS")
    <local_dir>/images/<site>/<job_id>/...        images fetched for one run (deleted by CleanupImages)

It is also FLIP's dev platform (``FLIPStandardDev``) for researchers' apps: ``get_dataframe`` reads the site's CSV
and ``get_by_accession_number`` gives ``<image root>/<accession_id>/`` (``DEV_DATAFRAME`` / ``DEV_IMAGES_DIR``, or
the site's entry of ``FLIP_SITE_DATA``: flip.platform.site); every call to FLIP's hub, S3 or cleanup only logs.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flip.checks import check_path_name
from flip.constants import ModelStatus, ResourceType, RunStatus
from flip.errors import JSONValueError, PlatformError
from flip.files import to_json
from flip.platform.base import Platform
from flip.platform.flip_api import ACCESSION_COLUMN, FLIPBase, training_log
from flip.platform.site import DATAFRAME_VAR, IMAGES_VAR, SITE_DATA_VAR, DevData, current_site
from flip.utils.utils import Utils

if TYPE_CHECKING:
    import pandas as pd

STATUS_FILE = "status.jsonl"
METRICS_FILE = "metrics.jsonl"
LOGS_FILE = "logs.jsonl"
READY_MARKER = ".flip_ready"


def _number_text(value: Any) -> str:
    """``value`` as FLIP's dev log shows a metric (``%0.4f``), or its type if it is not a number."""
    try:
        return f"{float(value):0.4f}"
    except (TypeError, ValueError):
        return f"<{type(value).__name__}>"


class LocalPlatform(Platform, FLIPBase):
    """Dev platform over local files (see module docstring for the layout); FLIP's dev platform for apps.

    Args:
        local_dir: the platform's folder (``FLIP_LOCAL_DIR``).
        dev_data: FLIP's dev data variables; default: read from the environment at each call.
    """

    name = "dev"
    _lock = threading.Lock()

    def __init__(self, local_dir: str | Path, dev_data: DevData | None = None):
        self.local_dir = Path(local_dir).expanduser().resolve()
        self.dev_data = dev_data

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

    def report_event(
        self,
        model_id: str,
        run_id: str,
        event: str,
        round_num: int,
        site: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        try:
            body = training_log(client_name=site, event_type=event, global_round=round_num, details=details)
        except ValueError as exc:
            raise PlatformError(f"not recorded in {LOGS_FILE}: {exc}") from exc
        self._append(
            LOGS_FILE,
            {
                "time": time.time(),
                "model_id": model_id,
                "run_id": run_id,
                "site": site,
                "round": round_num,
                "event": body["event_type"],
                "details": details,
                "success": True,
            },
        )

    def report_failure(self, model_id: str, run_id: str, site: str | None, reason: str) -> None:
        try:
            training_log(client_name=site, text=reason, success=False)
        except ValueError as exc:
            raise PlatformError(f"not recorded in {LOGS_FILE}: {exc}") from exc
        self._append(
            LOGS_FILE,
            {
                "time": time.time(),
                "model_id": model_id,
                "run_id": run_id,
                "site": site,
                "text": reason,
                "success": False,
            },
        )

    def read_logs(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Return the recorded round events and failures, oldest first (optionally of one model)."""
        records = [r for r in _read_jsonl(self.local_dir / LOGS_FILE) if model_id in (None, r.get("model_id"))]
        for r in records:
            r.setdefault("text", r.get("event"))
        return records

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

    # FLIP's API, dev: the cohort from local files; the hub, S3 and cleanup only log ----------------------
    def _dev(self) -> DevData:
        if self.dev_data is not None:
            return self.dev_data
        from flip.settings import load_settings

        return load_settings().dev_data()

    def get_dataframe(self, project_id: str, query: str) -> pd.DataFrame:
        """Return the current site's dev CSV (``FLIP_SITE_DATA`` entry, else ``DEV_DATAFRAME``) as a DataFrame.

        ``project_id`` and ``query`` are checked, not used. ``accession_id`` is read as text (so ``00123`` keeps
        its zeros and is a str, as FLIP's cohort API gives it).

        Raises:
            TypeError: project_id or query is not a str.
            PlatformError: no CSV for this site (names the site and the variables), or it cannot be read.
            ValueError: the CSV has no ``accession_id`` column (names the file and the column).
        """
        self.check_project_id(project_id)
        self.check_query(query)
        import pandas as pd

        path = self._dev().dataframe_path()
        if not path.is_file():
            raise PlatformError(f"the dev dataframe {path} is not a file (set by {SITE_DATA_VAR} or {DATAFRAME_VAR})")
        try:
            frame = pd.read_csv(path, dtype={ACCESSION_COLUMN: str})
        except (OSError, ValueError) as exc:  # pandas' parser and decoding errors are ValueErrors
            raise PlatformError(f"cannot read the dev dataframe {path} as CSV: {type(exc).__name__}") from exc
        if ACCESSION_COLUMN not in frame.columns:
            raise ValueError(
                f"the dev dataframe {path} has no {ACCESSION_COLUMN!r} column (every cohort has one; "
                f"it has {len(frame.columns)} other columns)"
            )
        self.logger.info(
            "get_dataframe: %d rows, %d columns (dev dataframe of %s)",
            len(frame),
            len(frame.columns),
            current_site() or "this process",
        )
        return frame

    def get_by_accession_number(
        self, project_id: str, accession_id: str, resource_type: ResourceType | list[ResourceType] = ResourceType.NIFTI
    ) -> Path:
        """Return ``<image root>/<accession_id>``; a missing folder is created empty (FLIP's dev behaviour).

        The image root is the current site's (``FLIP_SITE_DATA`` entry, else ``DEV_IMAGES_DIR``); it must exist.

        Raises:
            TypeError: project_id or accession_id is not a str, or resource_type is not a ResourceType or a list
                of them.
            ValueError: accession_id is not one safe path component (``../x``, ``/etc``, ``''``, a newline...).
            PlatformError: no image root for this site (names the site and the variables), or it is not a folder.
        """
        self.check_project_id(project_id)
        accession_id = self.checked_accession_id(accession_id)
        self.check_resource_type(resource_type)
        root = self._dev().images_root()
        if not root.is_dir():
            raise PlatformError(f"the dev image root {root} is not a folder (set by {SITE_DATA_VAR} or {IMAGES_VAR})")
        folder = root / accession_id
        fingerprint = Utils.hash_for_log(accession_id)
        if not folder.exists():
            try:
                folder.mkdir()
            except OSError as exc:
                raise PlatformError(
                    f"cannot create the image folder of accession #{fingerprint} under {root}: {exc.strerror}"
                ) from exc
            self.logger.info(
                "get_by_accession_number: accession #%s has no images: created its folder empty", fingerprint
            )
        return folder

    def add_resource(
        self, project_id: str, accession_id: str, scan_id: str, resource_id: str, files: list[str]
    ) -> None:
        """Check the arguments as FLIP's prod does, log, upload nothing (dev).

        Raises:
            TypeError: one of the ids is not a str, or files is not a list.
        """
        for name, value in (
            ("project_id", project_id),
            ("accession_id", accession_id),
            ("scan_id", scan_id),
            ("resource_id", resource_id),
        ):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        if not isinstance(files, list):
            raise TypeError(f"files must be a list of file paths, got {type(files).__name__}")
        self.logger.info(
            "add_resource: %d files for accession #%s (dev: not uploaded)", len(files), Utils.hash_for_log(accession_id)
        )

    def update_status(self, model_id: str, new_model_status: ModelStatus) -> None:
        """Log the new status (dev: nothing is sent)."""
        status = getattr(new_model_status, "value", new_model_status)
        self.logger.info("update_status: model %s -> %s (dev: not sent)", model_id, status)

    def send_metrics(self, client_name: str, model_id: str, label: str, value: float, round: int) -> None:
        """Log the metric (dev: nothing is sent)."""
        self.logger.info(
            "send_metrics: %s, model %s, round %s: %s = %s (dev: not sent)",
            client_name,
            model_id,
            round,
            label,
            _number_text(value),
        )

    def send_handled_exception(self, formatted_exception: str, client_name: str | None, model_id: str) -> None:
        """Log that a failure was reported, not its text (it may hold paths or data; dev: nothing is sent)."""
        size = len(formatted_exception) if isinstance(formatted_exception, str) else 0
        self.logger.info(
            "send_handled_exception: from %s, model %s, %d characters (dev: not sent)",
            client_name or "the server",
            model_id,
            size,
        )

    def send_event(
        self,
        model_id: str,
        event_type: Any,
        global_round: int,
        client_name: str | None = None,
        details: dict[str, Any] | None = None,
        success: bool = True,
    ) -> None:
        """Log the event's type, round and detail keys (dev: nothing is sent)."""
        keys = sorted(map(str, details)) if isinstance(details, dict) else []
        self.logger.info(
            "send_event: model %s, %s, round %s, %s, success %s, details %s (dev: not sent)",
            model_id,
            getattr(event_type, "value", event_type),
            global_round,
            client_name or "the server",
            success,
            keys,
        )

    def upload_results_to_s3(self, results_folder: Path, model_id: str) -> None:
        """Log (dev: nothing is uploaded; flip's server uploads a run with PersistToS3AndCleanup)."""
        self.logger.info("upload_results_to_s3: model %s (dev: not uploaded)", model_id)

    def cleanup(self, path: Path) -> None:
        """Log (dev: nothing is deleted)."""
        self.logger.info("cleanup: dev deletes nothing")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
