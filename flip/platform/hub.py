"""The production platform: the FLIP hub's HTTP API (docs/hub-api.md), used by the server only.

Status and metrics go to the hub; the initial ("safehouse") model comes from it; a site's images are local, as on
the dev platform (sites never talk to the hub and never hold its key). Every request has a timeout and is retried
with backoff on connection errors and 5xx; a request that still fails raises PlatformError with a short cause.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from flip.constants import RunStatus
from flip.errors import JSONValueError, PlatformError, SettingsError
from flip.files import to_json
from flip.platform.base import check_model_id, check_path_name
from flip.platform.dev import LocalPlatform

API = "/api/v1"


class HubPlatform(LocalPlatform):
    """The hub's API for status, metrics and the initial model; the local folder for a site's images.

    Args:
        hub_url: the hub's base URL (``FLIP_HUB_URL``); None on a site.
        api_key: the hub's key (``FLIP_HUB_API_KEY``); None on a site.
        local_dir: where a site's images and the safehouse cache live (``FLIP_LOCAL_DIR``).
        timeout: seconds per request. Default 5.
        attempts: tries per request (>= 1), with backoff 0.5 s, 1 s, 2 s... Default 4.
    """

    name = "prod"

    def __init__(self, hub_url: str | None, api_key: SecretStr | None, local_dir: str | Path,
                 timeout: float = 5.0, attempts: int = 4, backoff: float = 0.5):
        super().__init__(local_dir)
        self.hub_url = hub_url.rstrip("/") if hub_url else None
        self._api_key = api_key
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff

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
    def _request(self, method: str, path: str, body: Any = None, *, expect_json: bool = True,
                 allow_404: bool = False) -> Any:
        self.require_hub()
        try:
            data = to_json(body).encode() if body is not None else None
        except JSONValueError as exc:
            raise PlatformError(f"not sent to the hub ({method} {path}): {exc}") from exc
        last = "no attempt"
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(self.hub_url + path, data=data, method=method)
            request.add_header("Authorization", f"Bearer {self._api_key.get_secret_value()}")
            if data is not None:
                request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    payload = reply.read()
                return json.loads(payload) if expect_json and payload else payload
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    raise PlatformError(f"hub refused the API key (HTTP {exc.code}): check FLIP_HUB_API_KEY") from exc
                if exc.code == 404 and allow_404:
                    return None
                if exc.code < 500:
                    raise PlatformError(f"hub rejected {method} {path} (HTTP {exc.code})") from exc
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = type(reason).__name__ if isinstance(reason, BaseException) else type(exc).__name__
            if attempt < self.attempts:
                time.sleep(self.backoff * 2 ** (attempt - 1))
        raise PlatformError(f"hub unreachable after {self.attempts} attempts ({last}) for {method} {path}")

    def _run_path(self, model_id: str, run_id: str) -> str:
        return f"{API}/models/{check_model_id(model_id)}/runs/{check_path_name('run id', run_id)}"

    # -- the platform ---------------------------------------------------------------------------------------
    def report_status(self, model_id: str, run_id: str, status: RunStatus, reason: str | None = None) -> None:
        body = {"status": RunStatus(status).value, "time": time.time()}
        if reason:
            body["reason"] = reason
        self._request("POST", self._run_path(model_id, run_id) + "/status", body, expect_json=False)

    def report_metrics(self, model_id: str, run_id: str, round_num: int, site: str, metrics: dict[str, Any]) -> None:
        body = {"round": round_num, "site": site, "metrics": metrics, "time": time.time()}
        self._request("POST", self._run_path(model_id, run_id) + "/metrics", body, expect_json=False)

    def read_statuses(self, model_id: str | None = None) -> list[dict[str, Any]]:
        if model_id is None:
            raise PlatformError("the hub lists statuses per model: give a model id")
        return self._request("GET", f"{API}/models/{check_model_id(model_id)}/status") or []

    def read_metrics(self, model_id: str | None = None) -> list[dict[str, Any]]:
        if model_id is None:
            raise PlatformError("the hub lists metrics per model: give a model id")
        return self._request("GET", f"{API}/models/{check_model_id(model_id)}/metrics") or []

    def initial_model_path(self, model_id: str) -> Path | None:
        """Fetch the hub's initial model into the local safehouse cache; None if the hub has none."""
        model_id = check_model_id(model_id)
        payload = self._request("GET", f"{API}/models/{model_id}/initial-model", expect_json=False, allow_404=True)
        if payload is None:
            return None
        target = self._safehouse_path(model_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(payload)
        os.replace(tmp, target)
        return target
