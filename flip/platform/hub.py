"""The prod platform: FLIP's hub internal API on the server, the trust's services at a site (docs/flip-protocol.md).

On the server (FLIP: flip-api ``private_services``), every call carries the internal service key in
``INTERNAL_SERVICE_KEY_HEADER``; the base URL ``FLIP_API_INTERNAL_URL`` includes ``/api``:

- a status: ``PUT {base}/model/{model_id}/status/{STATUS}``, no body, FLIP's names (our TRAINING_STARTED is RUNNING);
- metrics: ``POST {base}/model/{model_id}/metrics``, one request per label (``TrainingMetrics``);
- site failures, the run's failure reason and round events: ``POST {base}/model/{model_id}/logs`` (``TrainingLog``:
  free text with ``success: false``, or a typed event ``ROUND_STARTED`` / ``CLIENT_RESULT_RECEIVED`` /
  ``ROUND_AGGREGATED``, 1-based rounds).

What flip adds, on flip.platform.http's rules: timeouts, bounded retries with capped backoff, no redirects (the key
stays with the hub), answers bounded and never logged, the key never logged (SecretStr, or read from
``INTERNAL_SERVICE_KEY_FILE`` by the server only). After a request failed, reports other than final statuses are
not attempted for :attr:`HubPlatform.holdoff` seconds (a hub that is down does not stall every round). A final status
the hub does not take is recorded in ``<FLIP_LOCAL_DIR>/hub_outbox.json`` for ``flip status`` and
``flip status MODEL_ID --resend``.

``flip status`` reads FLIP's user routes with a user's bearer token (``FLIP_HUB_USER_TOKEN``):
``POST {base}/step/model/{id}`` (the model, its status and lifecycle dates), ``GET {base}/model/{id}/logs`` and
``GET {base}/model/{id}/metrics``.

At a site, FLIP apps' data calls go to the trust's services (flip.platform.trust): the site's ``FLIP_SITE_ENV``
entry, if any, over its own variables. The images of a run are the imaging service's folder
``<IMAGES_DIR>/<NET_ID>`` (what CleanupImages empties, as in FLIP). The initial ("safehouse") model is the local
copy under ``FLIP_LOCAL_DIR`` as on the dev platform: FLIP's hub delivers a job's initial weights in the job itself.
"""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from flip.checks import check_model_id, check_path_name
from flip.constants import FLLogEvent, ModelStatus, ResourceType, RunStatus
from flip.errors import (
    CleanupError,
    JSONValueError,
    PlatformError,
    ResultsUploadError,
    SettingsError,
    StatusNotDelivered,
)
from flip.files import to_json, write_json_atomic
from flip.platform.dev import LocalPlatform
from flip.platform.flip_api import MAX_LOG_TEXT, training_log, training_metrics
from flip.platform.http import (
    DEFAULT_DEADLINE,
    MAX_SLEEP,
    Retry,
    Service,
    check_api_url,
    check_header_name,
    check_timeout,
    request,
)
from flip.platform.site import current_site
from flip.platform.trust import TrustClient

HUB = Service(
    name="hub",
    url_var="FLIP_API_INTERNAL_URL",
    key_var="INTERNAL_SERVICE_KEY",
    error=PlatformError,
    meanings={
        400: "the hub cannot attribute the client to a trust of this model (FLIP's fl_kit_slot)",
        404: "the hub has no such model",
        422: "the hub refused the request's form",
    },
)
HUB_USER = Service(
    name="hub",
    url_var="FLIP_API_INTERNAL_URL",
    key_var="FLIP_HUB_USER_TOKEN",
    error=PlatformError,
    meanings={404: "the hub has no such model"},
)

#: our lifecycle -> FLIP's status names on the wire
WIRE_STATUS: dict[RunStatus, ModelStatus] = {
    RunStatus.INITIATED: ModelStatus.INITIATED,
    RunStatus.PREPARED: ModelStatus.PREPARED,
    RunStatus.TRAINING_STARTED: ModelStatus.RUNNING,
    RunStatus.RESULTS_UPLOADED: ModelStatus.RESULTS_UPLOADED,
    RunStatus.ERROR: ModelStatus.ERROR,
    RunStatus.STOPPED: ModelStatus.STOPPED,
}
#: the site name of the sites' weighted mean in our metrics: FLIP's hub has no such client, so it is not sent
GLOBAL_SITE = "global"
OUTBOX_FILE = "hub_outbox.json"
#: seconds during which, after a failed request, reports other than final statuses are not attempted
HOLDOFF = 30.0
#: the largest hub answer read (statuses, logs and metrics of one model)
HUB_MAX_BYTES = 16 * 1024 * 1024


class Outbox:
    """Final statuses the hub did not take, per run: ``<local_dir>/hub_outbox.json`` (one record per model and run).

    A newer final status of a run replaces an older one (e.g. ``flip upload --resume`` finishing a failed upload);
    a delivered one removes it.
    """

    _lock = threading.Lock()

    def __init__(self, local_dir: Path):
        self.path = Path(local_dir) / OUTBOX_FILE

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PlatformError(f"cannot read {self.path}: {type(exc).__name__}") from exc
        if not isinstance(data, dict):
            raise PlatformError(f"{self.path} is not a JSON object of undelivered statuses")
        return data

    def records(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """The undelivered final statuses (of one model), oldest first."""
        with self._lock:
            found = [r for r in self._read().values() if model_id in (None, r.get("model_id"))]
        return sorted(found, key=lambda r: r.get("time", 0))

    def add(self, model_id: str, run_id: str, status: RunStatus, reason: str | None, error: str) -> Path:
        record = {"model_id": model_id, "run_id": run_id, "status": status.value, "time": time.time(), "error": error}
        if reason:
            record["reason"] = reason
        with self._lock:
            data = self._read()
            data[f"{model_id}/{run_id}"] = record
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, data, indent=2, sort_keys=True)
        return self.path

    def remove(self, model_id: str, run_id: str) -> None:
        with self._lock:
            data = self._read()
            if data.pop(f"{model_id}/{run_id}", None) is not None:
                write_json_atomic(self.path, data, indent=2, sort_keys=True)


def _epoch(value: Any) -> float | None:
    """An ISO date of FLIP's answers as Unix seconds (None if absent or unreadable)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


class HubPlatform(LocalPlatform):
    """FLIP's hub on the server, the trust's services at a site; the local folder for the safehouse copy.

    Args:
        hub_url: the hub's internal API base, ``/api`` included (``FLIP_API_INTERNAL_URL``); None on a site.
        api_key: the hub's internal service key (``INTERNAL_SERVICE_KEY``); None on a site.
        local_dir: ``FLIP_LOCAL_DIR``: the safehouse copy, and the server's record of undelivered final statuses.
        timeout: seconds per request, in (0, 300]. Default 5.
        attempts: tries per request, 1 to 10. Default 4.
        backoff: the first sleep between tries, doubled after each (0.5 s, 1 s, 2 s...), each at most
            ``max_sleep`` (<= 8 s). Default 0.5.
        deadline: seconds after which a request gives up, however many tries are left. Default 120.
        trust: the trust services for every site; default: from the settings, per site (``FLIP_SITE_ENV``).
        key_header: the header the hub checks (``INTERNAL_SERVICE_KEY_HEADER``). Default ``X-Internal-Service-Key``.
        key_file: a file holding the key (``INTERNAL_SERVICE_KEY_FILE``), read when the server first needs it.
        user_token: a hub user's bearer token for reading a model back (``FLIP_HUB_USER_TOKEN``).
        http_hosts: hosts reached over plain http besides loopback (``FLIP_HTTP_HOSTS``).
        settings: flip's settings (for the trust services); default: read from the environment when needed.

    Raises:
        SettingsError: hub_url is not a safe base URL, or key_header is not a header name (named).
        ValueError: timeout, attempts, backoff, max_sleep or deadline out of range (named).
    """

    name = "prod"

    def __init__(
        self,
        hub_url: str | None,
        api_key: SecretStr | None,
        local_dir: str | Path,
        timeout: float = 5.0,
        attempts: int = 4,
        backoff: float = 0.5,
        max_sleep: float = MAX_SLEEP,
        deadline: float = DEFAULT_DEADLINE,
        trust: TrustClient | None = None,
        *,
        key_header: str = "X-Internal-Service-Key",
        key_file: str | Path | None = None,
        user_token: SecretStr | None = None,
        http_hosts: frozenset[str] = frozenset(),
        settings=None,
    ):
        super().__init__(local_dir)
        self._trust = trust
        self._trusts: dict[str | None, TrustClient] = {}
        self._settings = settings
        try:
            self.hub_url = check_api_url(hub_url, "hub URL", http_hosts) if hub_url else None
        except ValueError as exc:
            raise SettingsError(f"FLIP_API_INTERNAL_URL: {exc}") from exc
        try:
            self.key_header = check_header_name(key_header, "INTERNAL_SERVICE_KEY_HEADER")
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        self._api_key = api_key if api_key is None or api_key.get_secret_value() else None
        self._key_file = Path(key_file) if key_file else None
        self._user_token = user_token
        self.timeout = check_timeout(timeout)
        self.retry = Retry(attempts=attempts, backoff=backoff, max_sleep=max_sleep, deadline=deadline)
        self.holdoff = HOLDOFF
        self._failed_at: float | None = None
        self.outbox = Outbox(self.local_dir)

    def __repr__(self) -> str:
        key = "***" if self._api_key else ("<file>" if self._key_file else None)
        return f"HubPlatform(hub_url={self.hub_url!r}, api_key={key})"

    # -- the key --------------------------------------------------------------------------------------------
    def _key(self) -> str:
        """The internal service key: the variable's, or the key file's first line (read once)."""
        if self._api_key is None and self._key_file is not None:
            try:
                text = self._key_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SettingsError(
                    f"INTERNAL_SERVICE_KEY_FILE: cannot read {self._key_file} ({type(exc).__name__})"
                ) from None
            lines = text.strip().splitlines()
            if not lines or not lines[0].strip():
                raise SettingsError(f"INTERNAL_SERVICE_KEY_FILE: {self._key_file} holds no key")
            self._api_key = SecretStr(lines[0].strip())
        if self._api_key is None:
            raise SettingsError(
                "the hub's key is not set (INTERNAL_SERVICE_KEY, FLIP_HUB_API_KEY or INTERNAL_SERVICE_KEY_FILE)"
            )
        return self._api_key.get_secret_value()

    def require_hub(self) -> None:
        """Check the server's hub settings (call at run start on the server); reads the key file, if any.

        Raises:
            SettingsError: the hub URL or the key is missing (naming FLIP's variables and ours), or the key file
                cannot be read.
        """
        missing = []
        if not self.hub_url:
            missing.append("FLIP_API_INTERNAL_URL (or FLIP_HUB_URL)")
        if self._api_key is None and self._key_file is None:
            missing.append("INTERNAL_SERVICE_KEY (or FLIP_HUB_API_KEY, or INTERNAL_SERVICE_KEY_FILE)")
        if missing:
            raise SettingsError(f"FLIP_ENV=prod: the server needs {' and '.join(missing)} to reach the hub")
        self._key()

    # -- HTTP -----------------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, body: Any = None, *, final: bool = False) -> bytes:
        """Send one request to the hub's internal API; return the answer's body.

        Raises:
            PlatformError: it failed (see flip.platform.http), or the hub failed less than ``holdoff`` seconds ago
                and this is not a final status's request (not attempted).
        """
        self.require_hub()
        if not final and self._failed_at is not None and time.monotonic() - self._failed_at < self.holdoff:
            raise PlatformError(
                f"hub not asked ({method} {path}): it failed {time.monotonic() - self._failed_at:.0f} s "
                f"ago; reports are held off for {self.holdoff:g} s after a failure"
            )
        headers = {self.key_header: self._key()}
        data = None
        if body is not None:
            try:
                data = to_json(body).encode()
            except JSONValueError as exc:
                raise PlatformError(f"not sent to the hub ({method} {path}): {exc}") from exc
            headers["Content-Type"] = "application/json"
        try:
            reply = request(
                HUB,
                method,
                self.hub_url + path,
                body=data,
                headers=headers,
                timeout=self.timeout,
                retry=self.retry,
                max_bytes=HUB_MAX_BYTES,
            )
        except PlatformError:
            self._failed_at = time.monotonic()
            raise
        self._failed_at = None
        return reply.body

    def _put_status(self, model_id: str, status: ModelStatus, *, final: bool = False) -> None:
        self._send("PUT", f"/model/{check_model_id(model_id)}/status/{ModelStatus(status).value}", final=final)

    def _post_log(self, model_id: str, body: dict[str, Any], *, final: bool = False) -> None:
        self._send("POST", f"/model/{check_model_id(model_id)}/logs", body, final=final)

    def _post_metric(self, model_id: str, body: dict[str, Any]) -> None:
        self._send("POST", f"/model/{check_model_id(model_id)}/metrics", body)

    # -- the platform: our lifecycle on FLIP's wire -----------------------------------------------------------
    def report_status(self, model_id: str, run_id: str, status: RunStatus, reason: str | None = None) -> None:
        """Send ``status`` by FLIP's name; for ERROR/STOPPED with a reason, the reason first as a failure log.

        Raises:
            StatusNotDelivered: a final status the hub did not take (recorded in the outbox for a resend).
            PlatformError: another status the hub did not take.
        """
        status = RunStatus(status)
        model_id = check_model_id(model_id)
        final = status.is_final
        try:
            if reason and status in (RunStatus.ERROR, RunStatus.STOPPED):
                self._post_log(
                    model_id, training_log(text=_bounded(f"run {run_id}: {reason}"), success=False), final=final
                )
            self._put_status(model_id, WIRE_STATUS[status], final=final)
        except PlatformError as exc:
            if not final:
                raise
            path = self.outbox.add(model_id, run_id, status, reason, str(exc))
            raise StatusNotDelivered(
                f"{exc}; final status {status.value} recorded in {path} (resend with `flip "
                f"status {model_id} --resend`)",
                recorded=path,
            ) from exc
        if final:
            self.outbox.remove(model_id, run_id)

    def report_metrics(self, model_id: str, run_id: str, round_num: int, site: str, metrics: dict[str, Any]) -> None:
        """Send each metric of ``site`` as one ``TrainingMetrics`` (``global_round`` = ``round_num``, 1-based).

        The sites' weighted mean (site ``global``) is not sent: FLIP's hub keeps metrics per client. All values are
        checked before the first is sent.

        Raises:
            PlatformError: a value is not a finite number (nothing sent), or the hub did not take one.
        """
        model_id = check_model_id(model_id)
        if site == GLOBAL_SITE:
            return
        try:
            to_json({"metrics": metrics})
            bodies = [training_metrics(site, round_num, label, value) for label, value in metrics.items()]
        except (JSONValueError, ValueError) as exc:
            raise PlatformError(f"not sent to the hub (metrics of {site}, round {round_num}): {exc}") from exc
        for body in bodies:
            self._post_metric(model_id, body)

    def report_event(
        self,
        model_id: str,
        run_id: str,
        event: FLLogEvent | str,
        round_num: int,
        site: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        try:
            body = training_log(client_name=site, event_type=event, global_round=round_num, details=details)
        except ValueError as exc:
            raise PlatformError(f"not sent to the hub ({event} of round {round_num}): {exc}") from exc
        self._post_log(check_model_id(model_id), body)

    def report_failure(self, model_id: str, run_id: str, site: str | None, reason: str) -> None:
        try:
            body = training_log(client_name=site, text=_bounded(reason), success=False)
        except ValueError as exc:
            raise PlatformError(f"not sent to the hub (a failure of {site or 'the run'}): {exc}") from exc
        self._post_log(check_model_id(model_id), body)

    def resend(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Send again every final status the hub did not take (of one model); return those delivered.

        Raises:
            PlatformError: the first one the hub still does not take (it stays recorded).
        """
        delivered = []
        for record in self.outbox.records(model_id):
            status = RunStatus(record["status"])
            self.report_status(record["model_id"], record["run_id"], status, record.get("reason"))
            delivered.append(record)
        return delivered

    def undelivered(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """The final statuses the hub did not take (of one model), oldest first."""
        return self.outbox.records(model_id)

    # -- reading a model back (FLIP's user routes) ----------------------------------------------------------
    def _read(self, method: str, path: str) -> Any:
        if not self.hub_url:
            raise SettingsError("flip status in prod reads the hub: set FLIP_API_INTERNAL_URL (or FLIP_HUB_URL)")
        if self._user_token is None or not self._user_token.get_secret_value():
            raise SettingsError(
                "flip status in prod reads FLIP's user routes: set FLIP_HUB_USER_TOKEN to a hub "
                "user's bearer token (the internal service key is not accepted there)"
            )
        headers = {"Authorization": f"Bearer {self._user_token.get_secret_value()}", "Accept": "application/json"}
        reply = request(
            HUB_USER,
            method,
            self.hub_url + path,
            headers=headers,
            timeout=self.timeout,
            retry=self.retry,
            max_bytes=HUB_MAX_BYTES,
        )
        try:
            return json.loads(reply.body) if reply.body else None
        except ValueError as exc:
            raise PlatformError(f"hub answered {method} {path} with a body that is not JSON") from exc

    def read_model(self, model_id: str) -> dict[str, Any]:
        """FLIP's model record (``POST /step/model/{id}``): status, lifecycle dates, name..."""
        answer = self._read("POST", f"/step/model/{check_model_id(model_id)}")
        if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
            raise PlatformError("hub answered POST /step/model/{id} without a model status")
        return answer

    def read_statuses(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """The model's status path on the hub: the lifecycle dates it keeps, then its current status.

        FLIP's hub keeps one status per model (no history): the dates of PREPARED, RUNNING and RESULTS_UPLOADED
        and the current status, which this returns oldest first (``time`` None where the hub gives no date).
        """
        if model_id is None:
            raise PlatformError("the hub reads statuses per model: give a model id")
        model = self.read_model(model_id)
        records = [
            {"time": _epoch(model.get(key)), "status": status}
            for key, status in (
                ("creationTimestamp", "PENDING"),
                ("preparedAt", "PREPARED"),
                ("trainingStartedAt", "RUNNING"),
                ("resultsUploadedAt", "RESULTS_UPLOADED"),
            )
            if _epoch(model.get(key)) is not None
        ]
        records.sort(key=lambda r: r["time"])
        if not records or records[-1]["status"] != model["status"]:
            records.append({"time": None, "status": model["status"]})
        return records

    def read_metrics(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """The model's metrics on the hub (``GET /model/{id}/metrics``) as ``{"round", "site", "metrics"}`` records:
        a round is the x value, a site the series (FLIP's trust), a metric name the y label."""
        if model_id is None:
            raise PlatformError("the hub reads metrics per model: give a model id")
        answer = self._read("GET", f"/model/{check_model_id(model_id)}/metrics") or []
        merged: dict[tuple[Any, str], dict[str, Any]] = {}
        for chart in answer if isinstance(answer, list) else []:
            for series in chart.get("metrics") or []:
                for point in series.get("data") or []:
                    x, y = point.get("xValue"), point.get("yValue")
                    if not (_is_number(x) and _is_number(y)):
                        continue
                    round_num = int(x) if float(x).is_integer() else x
                    record = merged.setdefault(
                        (round_num, series.get("seriesLabel", "?")),
                        {"round": round_num, "site": series.get("seriesLabel", "?"), "metrics": {}},
                    )
                    record["metrics"][chart.get("yLabel", "?")] = y
        return sorted(merged.values(), key=lambda r: (r["round"], r["site"]))

    def read_logs(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """The model's training log on the hub (``GET /model/{id}/logs``), oldest first."""
        if model_id is None:
            raise PlatformError("the hub reads logs per model: give a model id")
        answer = self._read("GET", f"/model/{check_model_id(model_id)}/logs") or []
        records = [
            {
                "time": _epoch(r.get("logDate")),
                "site": r.get("trustName"),
                "round": r.get("globalRound"),
                "text": r.get("log"),
                "success": r.get("success"),
            }
            for r in answer
            if isinstance(r, dict)
        ]
        return sorted(records, key=lambda r: r["time"] or 0)

    # -- a site's data (FLIP's prod platform) -----------------------------------------------------------------
    def trust_for(self, site: str | None) -> TrustClient:
        """The trust services of ``site`` (the given client, or the settings with the site's FLIP_SITE_ENV entry)."""
        if self._trust is not None:
            return self._trust
        if site not in self._trusts:
            if self._settings is None:
                from flip.settings import load_settings

                self._settings = load_settings()
            if site is None and self._settings.site_env:
                raise SettingsError(
                    "FLIP_SITE_ENV gives simulated sites their own trust variables, but the site this "
                    "process serves is not known (flip's executors name it): refusing to guess"
                )
            self._trusts[site] = TrustClient.from_settings(self._settings, site)
        return self._trusts[site]

    @property
    def trust(self) -> TrustClient:
        """The trust services of the site this process serves."""
        return self.trust_for(current_site())

    def site_images_dir(self, site_name: str, job_id: str) -> Path:
        """``<IMAGES_DIR>/<NET_ID>``: where the site's imaging service puts a run's images (FLIP's CleanupImages
        empties it); ``job_id`` is checked, not used (FLIP keeps one folder per net).

        Raises:
            SettingsError: IMAGES_DIR is not set for the site.
        """
        check_path_name("job id", job_id)
        trust = self.trust_for(check_path_name("site name", site_name))
        if not trust.images_dir:
            raise SettingsError(
                f"IMAGES_DIR is not set for site {site_name!r}: a prod site's images are the imaging "
                f"service's folder <IMAGES_DIR>/<NET_ID>"
            )
        return Path(trust.images_dir).expanduser().resolve() / trust.net_id

    def prepare_site_data(self, site_name: str, job_id: str) -> Path:
        """Create and return the site's images folder: in prod the images arrive through the imaging service
        (``get_by_accession_number``), never from a local copy."""
        folder = self.site_images_dir(site_name, job_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PlatformError(f"cannot create the images folder of site {site_name!r}: {exc.strerror}") from exc
        return folder

    def get_dataframe(self, project_id: str, query: str):
        """Return the cohort of ``query`` from the site's data-access service (flip.platform.trust)."""
        self.check_project_id(project_id)
        self.check_query(query)
        return self.trust.get_dataframe(project_id, query)

    def get_by_accession_number(
        self, project_id: str, accession_id: str, resource_type: ResourceType | list[ResourceType] = ResourceType.NIFTI
    ) -> Path:
        """Return the folder of the accession's images from the site's imaging service (flip.platform.trust)."""
        self.check_project_id(project_id)
        accession_id = self.checked_accession_id(accession_id)
        return self.trust.download_images(project_id, accession_id, self.check_resource_type(resource_type))

    def add_resource(
        self, project_id: str, accession_id: str, scan_id: str, resource_id: str, files: list[str]
    ) -> None:
        """Upload files to an accession's scan through the site's imaging service (flip.platform.trust)."""
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
        self.trust.add_resource(project_id, accession_id, scan_id, resource_id, files)

    # -- FLIP's hub calls (server): as FLIP, a failure is logged and never breaks the run ----------------------
    def _best_effort(self, call: str, send) -> None:
        try:
            send()
        except PlatformError as exc:
            self.logger.error("%s not delivered to the hub: %s", call, exc)

    def update_status(self, model_id: str, new_model_status: ModelStatus) -> None:
        """Set the model's status on the hub (ValueError for a non-UUID model id, as FLIP; failures logged)."""
        model_id = check_model_id(model_id)
        status = ModelStatus(new_model_status)
        self._best_effort(f"update_status {status.value}", lambda: self._put_status(model_id, status, final=True))

    def send_metrics(self, client_name: str, model_id: str, label: str, value: float, round: int) -> None:
        """Send one metric of a client (FLIP's ``TrainingMetrics``); a bad value or a failure is logged."""
        try:
            body = training_metrics(client_name, round, label, value)
            model_id = check_model_id(model_id)
        except ValueError as exc:
            self.logger.error("send_metrics not sent to the hub: %s", exc)
            return
        self._best_effort("send_metrics", lambda: self._post_metric(model_id, body))

    def send_handled_exception(self, formatted_exception: str, client_name: str | None, model_id: str) -> None:
        """Send a failure as a log with ``success: false`` (TypeError/ValueError on bad arguments, as FLIP).

        Only the exception's last line (its type and message) is sent, at most 300 characters: a traceback stays in
        the log where it was written.
        """
        if not isinstance(formatted_exception, str):
            raise TypeError(f"formatted_exception must be a str, got {type(formatted_exception).__name__}")
        if client_name is not None and not isinstance(client_name, str):
            raise TypeError(f"client_name must be a str or None, got {type(client_name).__name__}")
        model_id = check_model_id(model_id)
        lines = [line.strip() for line in formatted_exception.strip().splitlines() if line.strip()]
        text = lines[-1] if lines else "unknown error"
        text = text if len(text) <= 300 else text[:297] + "..."
        body = training_log(client_name=client_name, text=text, success=False)
        self._best_effort("send_handled_exception", lambda: self._post_log(model_id, body))

    def send_event(
        self,
        model_id: str,
        event_type,
        global_round: int,
        client_name: str | None = None,
        details: dict[str, Any] | None = None,
        success: bool = True,
    ) -> None:
        """Send a typed round event (ValueError for a non-UUID model id, as FLIP; a bad event or a failure is
        logged)."""
        model_id = check_model_id(model_id)
        try:
            body = training_log(
                client_name=client_name,
                event_type=event_type,
                global_round=global_round,
                details=details,
                success=success,
            )
        except ValueError as exc:
            self.logger.error("send_event not sent to the hub: %s", exc)
            return
        self._best_effort(f"send_event {body['event_type']}", lambda: self._post_log(model_id, body))

    def upload_results_to_s3(self, results_folder: Path, model_id: str) -> None:
        """Raise ResultsUploadError: flip uploads a run's results with PersistToS3AndCleanup (verified, resumable).

        Raises:
            ResultsUploadError: always (FLIP's failure type), naming the component that uploads.
        """
        raise ResultsUploadError(
            f"upload_results_to_s3 is not available for model {model_id}: flip's server uploads "
            f"a run's results with PersistToS3AndCleanup (to FLIP_MODELS_BUCKET / "
            f"UPLOADED_FEDERATED_DATA_BUCKET, verified)"
        )

    def cleanup(self, path: Path) -> None:
        """Refuse: flip deletes a run's files only after their upload was verified (PersistToS3AndCleanup).

        Raises:
            CleanupError: always.
        """
        raise CleanupError(
            "cleanup(path) is refused: flip deletes a run's files only after their upload to S3 was "
            "verified (PersistToS3AndCleanup), never on request"
        )


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_LOG_TEXT else text[: MAX_LOG_TEXT - 3] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
