"""The production platform: the FLIP hub's HTTP API (docs/hub-api.md), used by the server only.

Status and metrics go to the hub; the initial ("safehouse") model comes from it; a site's images are local, as on
the dev platform (sites never talk to the hub and never hold its key). Requests follow flip.platform.http's rules:
a checked https URL, a timeout, bounded retries with capped backoff, no redirect ever followed; a request that
still fails raises PlatformError with a short cause.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from flip.constants import RunStatus
from flip.errors import JSONValueError, PlatformError, SettingsError
from flip.files import to_json
from flip.checks import check_model_id, check_path_name
from flip.platform.dev import LocalPlatform
from flip.platform.http import (DEFAULT_DEADLINE, MAX_SLEEP, Accept, Reply, Retry, Service, check_service_url,
                                check_timeout, request)

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

    Raises:
        SettingsError: hub_url is not a safe base URL (https, or http on a loopback host; no credentials).
        ValueError: timeout, attempts, backoff, max_sleep or deadline out of range (named).
    """

    name = "prod"

    def __init__(self, hub_url: str | None, api_key: SecretStr | None, local_dir: str | Path,
                 timeout: float = 5.0, attempts: int = 4, backoff: float = 0.5, max_sleep: float = MAX_SLEEP,
                 deadline: float = DEFAULT_DEADLINE):
        super().__init__(local_dir)
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
