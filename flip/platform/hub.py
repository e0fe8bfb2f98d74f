"""The production platform: the FLIP hub's HTTP API (docs/hub-api.md), used by the server only.

Status and metrics go to the hub; the initial ("safehouse") model comes from it; a site's images are local, as on
the dev platform (sites never talk to the hub and never hold its key). Requests follow flip.platform.http's rules:
a checked https URL, a timeout, bounded retries with capped backoff, no redirect ever followed; a request that
still fails raises PlatformError with a short cause.

It is also FLIP's prod platform (``FLIPStandardProd``) for researchers' apps: their data calls go to the trust's
services through :class:`flip.platform.trust.TrustClient` (not implemented yet: a clear PlatformError); FLIP's hub
reporting calls check their arguments as FLIP does, then log that FLIP's hub API is not wired (flip's own server
reports through this class's hub API instead); ``upload_results_to_s3`` raises ResultsUploadError and ``cleanup``
refuses (flip uploads and cleans a run with PersistToS3AndCleanup, which deletes only what it verified in S3).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from flip.constants import ModelStatus, ResourceType, RunStatus
from flip.errors import CleanupError, JSONValueError, PlatformError, ResultsUploadError, SettingsError
from flip.files import to_json
from flip.checks import check_model_id, check_path_name
from flip.platform.dev import LocalPlatform
from flip.platform.http import (DEFAULT_DEADLINE, MAX_SLEEP, Accept, Reply, Retry, Service, check_service_url,
                                check_timeout, request)
from flip.platform.trust import TrustClient

API = "/api/v1"
HUB = Service(name="hub", url_var="FLIP_HUB_URL", key_var="FLIP_HUB_API_KEY", error=PlatformError)


def _already_recorded(status: int, attempt: int) -> bool:
    """A 409 to a retried status report: an earlier attempt was recorded but its answer was lost (a timeout)."""
    return status == 409 and attempt > 1


class HubPlatform(LocalPlatform):
    """The hub's API for status, metrics and the initial model; the local folder for a site's images.

    Args:
        hub_url: the hub's base URL (``FLIP_HUB_URL``); None on a site.
        api_key: the hub's key (``FLIP_HUB_API_KEY``); None on a site.
        local_dir: where a site's images and the safehouse cache live (``FLIP_LOCAL_DIR``).
        timeout: seconds per request, in (0, 300]. Default 5.
        attempts: tries per request, 1 to 10. Default 4.
        backoff: the first sleep between tries, doubled after each (0.5 s, 1 s, 2 s...), each at most
            ``max_sleep`` (<= 8 s). Default 0.5.
        deadline: seconds after which a request gives up, however many tries are left. Default 120.
        trust: the site's trust services for FLIP apps' data calls; default: from the environment when first used.

    Raises:
        SettingsError: hub_url is not a safe base URL (https, or http on a loopback host; no credentials).
        ValueError: timeout, attempts, backoff, max_sleep or deadline out of range (named).
    """

    name = "prod"

    def __init__(self, hub_url: str | None, api_key: SecretStr | None, local_dir: str | Path,
                 timeout: float = 5.0, attempts: int = 4, backoff: float = 0.5, max_sleep: float = MAX_SLEEP,
                 deadline: float = DEFAULT_DEADLINE, trust: TrustClient | None = None):
        super().__init__(local_dir)
        self._trust = trust
        try:
            self.hub_url = check_service_url(hub_url, "hub URL") if hub_url else None
        except ValueError as exc:
            raise SettingsError(f"FLIP_HUB_URL: {exc}") from exc
        self._api_key = api_key
        self.timeout = check_timeout(timeout)
        self.retry = Retry(attempts=attempts, backoff=backoff, max_sleep=max_sleep, deadline=deadline)

    def __repr__(self) -> str:
        return f"HubPlatform(hub_url={self.hub_url!r}, api_key={'***' if self._api_key else None})"

    def require_hub(self) -> None:
        """Check the server's hub settings (call at run start on the server).

        Raises:
            SettingsError: FLIP_HUB_URL or FLIP_HUB_API_KEY is missing (named).
        """
        missing = [n for n, v in (("FLIP_HUB_URL", self.hub_url), ("FLIP_HUB_API_KEY", self._api_key)) if not v]
        if missing:
            raise SettingsError(f"FLIP_ENV=prod: the server needs {', '.join(missing)} to reach the hub")

    # -- HTTP -----------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, *, accept: Accept | None = None) -> Reply:
        """Send one request to the hub by flip.platform.http's rules; return its successful answer."""
        self.require_hub()
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        data = None
        if body is not None:
            try:
                data = to_json(body).encode()
            except JSONValueError as exc:
                raise PlatformError(f"not sent to the hub ({method} {path}): {exc}") from exc
            headers["Content-Type"] = "application/json"
        return request(HUB, method, self.hub_url + path, body=data, headers=headers, timeout=self.timeout,
                       retry=self.retry, accept=accept)

    def _get_json(self, path: str) -> Any:
        payload = self._request("GET", path).body
        try:
            return json.loads(payload) if payload else None
        except ValueError as exc:
            raise PlatformError(f"hub answered GET {path} with invalid JSON") from exc

    def _run_path(self, model_id: str, run_id: str) -> str:
        return f"{API}/models/{check_model_id(model_id)}/runs/{check_path_name('run id', run_id)}"

    # -- the platform ---------------------------------------------------------------------------------------
    def report_status(self, model_id: str, run_id: str, status: RunStatus, reason: str | None = None) -> None:
        body = {"status": RunStatus(status).value, "time": time.time()}
        if reason:
            body["reason"] = reason
        self._request("POST", self._run_path(model_id, run_id) + "/status", body, accept=_already_recorded)

    def report_metrics(self, model_id: str, run_id: str, round_num: int, site: str, metrics: dict[str, Any]) -> None:
        body = {"round": round_num, "site": site, "metrics": metrics, "time": time.time()}
        self._request("POST", self._run_path(model_id, run_id) + "/metrics", body)

    def read_statuses(self, model_id: str | None = None) -> list[dict[str, Any]]:
        if model_id is None:
            raise PlatformError("the hub lists statuses per model: give a model id")
        return self._get_json(f"{API}/models/{check_model_id(model_id)}/status") or []

    def read_metrics(self, model_id: str | None = None) -> list[dict[str, Any]]:
        if model_id is None:
            raise PlatformError("the hub lists metrics per model: give a model id")
        return self._get_json(f"{API}/models/{check_model_id(model_id)}/metrics") or []

    def initial_model_path(self, model_id: str) -> Path | None:
        """Fetch the hub's initial model into the local safehouse cache; None if the hub has none."""
        model_id = check_model_id(model_id)
        reply = self._request("GET", f"{API}/models/{model_id}/initial-model", accept=lambda status, _: status == 404)
        if reply.status == 404:
            return None
        target = self._safehouse_path(model_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(reply.body)
        os.replace(tmp, target)
        return target

    # -- FLIP's API, prod -----------------------------------------------------------------------------------
    @property
    def trust(self) -> TrustClient:
        """The site's trust services (from the environment unless given)."""
        if self._trust is None:
            from flip.settings import load_settings

            self._trust = TrustClient.from_settings(load_settings())
        return self._trust

    def get_dataframe(self, project_id: str, query: str):
        """Return the cohort from the trust's data-access API (not implemented yet: PlatformError)."""
        self.check_project_id(project_id)
        self.check_query(query)
        return self.trust.get_dataframe(project_id, query)

    def get_by_accession_number(self, project_id: str, accession_id: str,
                                resource_type: ResourceType | list[ResourceType] = ResourceType.NIFTI) -> Path:
        """Return the accession's images from the trust's imaging API (not implemented yet: PlatformError)."""
        self.check_project_id(project_id)
        accession_id = self.checked_accession_id(accession_id)
        return self.trust.download_images(project_id, accession_id, self.check_resource_type(resource_type))

    def add_resource(self, project_id: str, accession_id: str, scan_id: str, resource_id: str,
                     files: list[str]) -> None:
        """Upload files to the trust's imaging API (not implemented yet: PlatformError)."""
        for name, value in (("project_id", project_id), ("accession_id", accession_id), ("scan_id", scan_id),
                            ("resource_id", resource_id)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        if not isinstance(files, list):
            raise TypeError(f"files must be a list of file paths, got {type(files).__name__}")
        self.trust.add_resource(project_id, accession_id, scan_id, resource_id, files)

    def _hub_not_wired(self, call: str, model_id: str) -> None:
        """FLIP's hub calls never break a run (FLIP logs and swallows their failures): log that it was not sent."""
        self.logger.error("%s for model %s not sent: FLIP's hub API (FLIP_API_INTERNAL_URL) is not wired in flip "
                          "yet; flip's server reports status and metrics through FLIP_HUB_URL", call, model_id)

    def update_status(self, model_id: str, new_model_status: ModelStatus) -> None:
        """Check the model id (ValueError, as FLIP) and the status; log that FLIP's hub API is not wired."""
        model_id = check_model_id(model_id)
        status = ModelStatus(new_model_status)
        self._hub_not_wired(f"update_status {status.value}", model_id)

    def send_metrics(self, client_name: str, model_id: str, label: str, value: float, round: int) -> None:
        """Log that FLIP's hub API is not wired (FLIP checks nothing here)."""
        self._hub_not_wired("send_metrics", model_id)

    def send_handled_exception(self, formatted_exception: str, client_name: str | None, model_id: str) -> None:
        """Check the arguments as FLIP does (TypeError, ValueError); log that FLIP's hub API is not wired."""
        if not isinstance(formatted_exception, str):
            raise TypeError(f"formatted_exception must be a str, got {type(formatted_exception).__name__}")
        if client_name is not None and not isinstance(client_name, str):
            raise TypeError(f"client_name must be a str or None, got {type(client_name).__name__}")
        self._hub_not_wired("send_handled_exception", check_model_id(model_id))

    def send_event(self, model_id: str, event_type, global_round: int, client_name: str | None = None,
                   details: dict[str, Any] | None = None, success: bool = True) -> None:
        """Check the model id (ValueError, as FLIP); log that FLIP's hub API is not wired."""
        self._hub_not_wired("send_event", check_model_id(model_id))

    def upload_results_to_s3(self, results_folder: Path, model_id: str) -> None:
        """Raise ResultsUploadError: flip uploads a run's results with PersistToS3AndCleanup (verified, resumable).

        Raises:
            ResultsUploadError: always (FLIP's failure type), naming the component that uploads.
        """
        raise ResultsUploadError(f"upload_results_to_s3 is not available for model {model_id}: flip's server uploads "
                                 f"a run's results with PersistToS3AndCleanup (to FLIP_MODELS_BUCKET, verified)")

    def cleanup(self, path: Path) -> None:
        """Refuse: flip deletes a run's files only after their upload was verified (PersistToS3AndCleanup).

        Raises:
            CleanupError: always.
        """
        raise CleanupError("cleanup(path) is refused: flip deletes a run's files only after their upload to S3 was "
                           "verified (PersistToS3AndCleanup), never on request")
