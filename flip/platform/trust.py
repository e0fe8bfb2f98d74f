"""A site's clients of its trust's services (FLIP's ``trust/data-access-api`` and ``trust/imaging-api``).

FLIP's prod platform gives a researcher's app its cohort and images through two services of the site's trust:

- data access: ``POST {DATA_ACCESS_API_URL}/cohort/dataframe`` with ``{"encrypted_project_id", "query"}``; the
  answer is the cohort, column-oriented JSON (``{"<column>": [values...]}``), with an ``accession_id`` column;
- imaging: ``POST {IMAGING_API_URL}/download/images/{NET_ID}?assessor_type=scan|assessor&resource_type=<R>`` with
  ``{"encrypted_central_hub_project_id", "accession_id"}``; the service puts the accession's images under
  ``<IMAGES_DIR>/<NET_ID>/...`` and answers ``{"path": "<folder>"}``; ``PUT .../upload/images/{NET_ID}`` adds files.

Every request carries the trust key in ``TRUST_INTERNAL_SERVICE_KEY_HEADER`` and follows flip.platform.http's rules
(https unless loopback or ``FLIP_HTTP_HOSTS``, no redirects, timeouts, bounded retries, a bounded answer). What flip
adds: the answer is checked (a dataframe without ``accession_id``, a path outside ``<IMAGES_DIR>``, a body that is
not the documented JSON are named errors), nothing of an answer's body is ever logged or put in a message (it is
patient data), accession ids are logged only as hashes. A site holds the trust key only; never the hub's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from pydantic import SecretStr

from flip.checks import check_path_name
from flip.constants import ResourceType
from flip.errors import SettingsError, TrustServiceError
from flip.platform.flip_api import ACCESSION_COLUMN
from flip.platform.http import (
    MAX_DEADLINE,
    Retry,
    Service,
    check_header_name,
    check_service_url,
    check_timeout,
    request,
)
from flip.utils.utils import Utils

if TYPE_CHECKING:
    import pandas as pd

    from flip.settings import FlipSettings

DATA_ACCESS = Service(
    name="data-access service",
    url_var="DATA_ACCESS_API_URL",
    key_var="TRUST_INTERNAL_SERVICE_KEY",
    error=TrustServiceError,
    key_refused=(401,),
    meanings={
        400: "the query was refused (the service runs one SELECT over the omop schema)",
        403: "the trust releases no row-level data for this cohort (too small, or no approved snapshot)",
        404: "no such route: check DATA_ACCESS_API_URL",
        422: "the request's form was refused",
    },
)
IMAGING = Service(
    name="imaging service",
    url_var="IMAGING_API_URL",
    key_var="TRUST_INTERNAL_SERVICE_KEY",
    error=TrustServiceError,
    key_refused=(401,),
    meanings={
        400: "the download was refused (invalid request)",
        404: "the trust has no such project, accession or resource",
        422: "the request's form was refused",
    },
)

logger = logging.getLogger(__name__)


def assessor_type(resource: ResourceType) -> str:
    """FLIP's ``assessor_type`` for a resource type: ``assessor`` for a segmentation, ``scan`` otherwise."""
    return "assessor" if resource == ResourceType.SEGMENTATION else "scan"


@dataclass(frozen=True)
class TrustClient:
    """One site's trust services, as its settings name them.

    Args:
        data_access_api_url: ``DATA_ACCESS_API_URL``. Default FLIP's ``http://localhost:8001``.
        imaging_api_url: ``IMAGING_API_URL``. Default FLIP's ``http://localhost:8002``.
        net_id: ``NET_ID``, the site's FL net (a path part at the imaging service). Default ``default``.
        key_header: ``TRUST_INTERNAL_SERVICE_KEY_HEADER``. Default ``X-Trust-Internal-Service-Key``.
        key: ``TRUST_INTERNAL_SERVICE_KEY`` (required to call).
        images_dir: ``IMAGES_DIR``, where the imaging service puts images (required to fetch images: a path it
            answers must resolve inside it).
        http_hosts: hosts reached over plain http besides loopback (``FLIP_HTTP_HOSTS``).
        timeout: seconds per request (``FLIP_TRUST_TIMEOUT``), in (0, 300]. Default 120.
        attempts: tries per request (``FLIP_TRUST_RETRIES``), 1 to 10. Default 3.
        max_bytes: the largest answer read (``FLIP_TRUST_MAX_RESPONSE_MB``). Default 256 MiB.
        backoff: the first sleep between tries in seconds, doubled each time. Default 0.5.
    """

    data_access_api_url: str = "http://localhost:8001"
    imaging_api_url: str = "http://localhost:8002"
    net_id: str = "default"
    key_header: str = "X-Trust-Internal-Service-Key"
    key: SecretStr = field(default=SecretStr(""), repr=False)
    images_dir: str = ""
    http_hosts: frozenset[str] = frozenset()
    timeout: float = 120.0
    attempts: int = 3
    max_bytes: int = 256 * 1024 * 1024
    backoff: float = 0.5

    def __post_init__(self) -> None:
        check_timeout(self.timeout, "trust timeout")
        if not (isinstance(self.max_bytes, int) and self.max_bytes >= 1):
            raise ValueError(f"max_bytes must be an integer >= 1, got {self.max_bytes!r}")
        _ = self.retry  # checks attempts and backoff

    @property
    def retry(self) -> Retry:
        """Attempts and backoff; the deadline leaves room for every attempt's timeout."""
        deadline = min(MAX_DEADLINE, self.timeout * self.attempts + 30.0)
        return Retry(attempts=self.attempts, backoff=self.backoff, deadline=deadline)

    @classmethod
    def from_settings(cls, settings: FlipSettings, site: str | None = None) -> TrustClient:
        """The trust client of ``site`` (default: the process's own variables): its ``FLIP_SITE_ENV`` entry, if
        any, overrides the process's trust variables (the simulator's sites share one environment).

        Raises:
            SettingsError: NET_ID or a header name in the site's entry is invalid (named).
        """
        values: dict[str, Any] = {
            "DATA_ACCESS_API_URL": settings.data_access_api_url,
            "IMAGING_API_URL": settings.imaging_api_url,
            "NET_ID": settings.net_id,
            "TRUST_INTERNAL_SERVICE_KEY_HEADER": settings.trust_internal_service_key_header,
            "TRUST_INTERNAL_SERVICE_KEY": settings.trust_internal_service_key,
            "IMAGES_DIR": settings.images_dir,
        }
        entry: Mapping[str, str] = settings.site_env.get(site, {}) if site else {}
        values.update(entry)
        where = f" (FLIP_SITE_ENV[{site!r}])" if entry else ""
        try:
            net_id = check_path_name("NET_ID", values["NET_ID"])
            header = check_header_name(values["TRUST_INTERNAL_SERVICE_KEY_HEADER"], "TRUST_INTERNAL_SERVICE_KEY_HEADER")
        except ValueError as exc:
            raise SettingsError(f"{exc}{where}") from None
        key = values["TRUST_INTERNAL_SERVICE_KEY"]
        return cls(
            data_access_api_url=values["DATA_ACCESS_API_URL"],
            imaging_api_url=values["IMAGING_API_URL"],
            net_id=net_id,
            key_header=header,
            key=key if isinstance(key, SecretStr) else SecretStr(key),
            images_dir=values["IMAGES_DIR"],
            http_hosts=settings.http_hosts,
            timeout=settings.trust_timeout,
            attempts=settings.trust_retries,
            max_bytes=settings.trust_max_response_mb * 1024 * 1024,
        )

    def with_(self, **changes: Any) -> TrustClient:
        """A copy with ``changes`` (e.g. a shorter timeout in a test)."""
        return replace(self, **changes)

    # -- HTTP -----------------------------------------------------------------------------------------------
    def _base(self, service: Service, url: str) -> str:
        try:
            return check_service_url(url, f"{service.name} URL", self.http_hosts)
        except ValueError as exc:
            raise SettingsError(f"{service.url_var}: {exc}") from None

    def _call(
        self, service: Service, method: str, base: str, path: str, body: Any, params: dict[str, str] | None = None
    ) -> Any:
        """Send one JSON request to ``service`` and return its JSON answer (``None`` for an empty one)."""
        base = self._base(service, base)
        secret = self.key.get_secret_value()
        if not secret:
            raise SettingsError(
                f"TRUST_INTERNAL_SERVICE_KEY is not set: the site's {service.name} needs the trust's "
                f"internal service key"
            )
        url = base + path + (f"?{urlencode(params)}" if params else "")
        headers = {self.key_header: secret, "Content-Type": "application/json", "Accept": "application/json"}
        reply = request(
            service,
            method,
            url,
            body=json.dumps(body).encode(),
            headers=headers,
            timeout=self.timeout,
            retry=self.retry,
            max_bytes=self.max_bytes,
        )
        if not reply.body:
            return None
        try:
            return json.loads(reply.body)
        except ValueError:
            raise TrustServiceError(
                f"{service.name} answered {method} {path} with a body that is not JSON "
                f"({len(reply.body)} bytes, not shown)"
            ) from None

    # -- the calls ------------------------------------------------------------------------------------------
    def get_dataframe(self, project_id: str, query: str) -> pd.DataFrame:
        """Return the cohort of ``query`` in project ``project_id`` from the data-access service.

        Raises:
            SettingsError: DATA_ACCESS_API_URL is not a safe URL or TRUST_INTERNAL_SERVICE_KEY is unset (named).
            TrustServiceError: the service failed (a refused key, a refused query, unreachable, an answer over the
                bound), or answered something other than column-oriented JSON with an ``accession_id`` column.
        """
        import pandas as pd

        path = "/cohort/dataframe"
        data = self._call(
            DATA_ACCESS, "POST", self.data_access_api_url, path, {"encrypted_project_id": project_id, "query": query}
        )
        columns = _columns(data, f"data-access service answered POST {path} with")
        frame = pd.DataFrame(columns)
        frame[ACCESSION_COLUMN] = [None if v is None else str(v) for v in frame[ACCESSION_COLUMN]]
        logger.info("get_dataframe: %d rows, %d columns (data-access service)", len(frame), len(frame.columns))
        return frame

    def download_images(self, project_id: str, accession_id: str, resources: list[ResourceType]) -> Path:
        """Ask the imaging service for each resource type of ``accession_id``; return the folder it answered last.

        Raises:
            SettingsError: IMAGING_API_URL, TRUST_INTERNAL_SERVICE_KEY or IMAGES_DIR is missing or invalid.
            TrustServiceError: the service failed, or answered a path that is not an existing folder inside
                ``<IMAGES_DIR>`` (symlinks resolved): refused, whatever is there is not used.
        """
        if not self.images_dir:
            raise SettingsError(
                "IMAGES_DIR is not set: flip uses images only from inside the folder the imaging "
                "service writes to (its BASE_IMAGES_DOWNLOAD_DIR as this site sees it)"
            )
        if not resources:
            raise ValueError("resource_type must name at least one ResourceType, got an empty list")
        path = f"/download/images/{quote(self.net_id, safe='')}"
        fingerprint = Utils.hash_for_log(accession_id)
        folder = None
        for resource in resources:
            params = {"assessor_type": assessor_type(resource), "resource_type": ResourceType(resource).value}
            answer = self._call(
                IMAGING,
                "POST",
                self.imaging_api_url,
                path,
                {"encrypted_central_hub_project_id": project_id, "accession_id": accession_id},
                params,
            )
            folder = self._inside_images_dir(answer, path, fingerprint)
        logger.info(
            "get_by_accession_number: accession #%s, %s (imaging service)",
            fingerprint,
            "+".join(ResourceType(r).value for r in resources),
        )
        return folder

    def _inside_images_dir(self, answer: Any, path: str, fingerprint: str) -> Path:
        if not (isinstance(answer, dict) and isinstance(answer.get("path"), str) and answer["path"]):
            raise TrustServiceError(
                f'imaging service answered POST {path} for accession #{fingerprint} without a "path" string'
            )
        root = Path(self.images_dir).expanduser().resolve()
        answered = Path(answer["path"])
        folder = answered.resolve() if answered.is_absolute() else None
        if folder is None or not folder.is_relative_to(root):
            raise TrustServiceError(
                f"imaging service answered POST {path} for accession #{fingerprint} with a path "
                f"outside IMAGES_DIR ({root}): refused"
            )
        if not folder.is_dir():
            raise TrustServiceError(
                f"imaging service answered POST {path} for accession #{fingerprint} with a path "
                f"inside IMAGES_DIR that is not a folder"
            )
        return folder

    def add_resource(
        self, project_id: str, accession_id: str, scan_id: str, resource_id: str, files: list[str]
    ) -> None:
        """Upload ``files`` (paths relative to ``<IMAGES_DIR>/<NET_ID>/upload/``) to an accession's scan.

        Raises:
            SettingsError, TrustServiceError: as :meth:`get_dataframe`.
        """
        path = f"/upload/images/{quote(self.net_id, safe='')}"
        self._call(
            IMAGING,
            "PUT",
            self.imaging_api_url,
            path,
            {
                "encrypted_central_hub_project_id": project_id,
                "accession_id": accession_id,
                "scan_id": scan_id,
                "resource_id": resource_id,
                "files": list(files),
            },
        )
        logger.info(
            "add_resource: %d files for accession #%s (imaging service)", len(files), Utils.hash_for_log(accession_id)
        )


def _columns(data: Any, where: str) -> dict[str, list]:
    """``data`` if it is FLIP's column-oriented cohort (``{column: [values]}``, equal lengths, ``accession_id``)."""
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, list) for k, v in data.items()):
        raise TrustServiceError(f"{where} something other than column-oriented JSON ({{column: [values]}})")
    lengths = {len(v) for v in data.values()}
    if len(lengths) > 1:
        raise TrustServiceError(f"{where} columns of different lengths ({sorted(lengths)})")
    if ACCESSION_COLUMN not in data:
        raise TrustServiceError(
            f"{where} a cohort without an {ACCESSION_COLUMN!r} column ({len(data)} other "
            f"columns): every cohort has one (the imaging service's key)"
        )
    return data
