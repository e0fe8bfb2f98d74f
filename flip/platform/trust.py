"""The seam for FLIP's trust services at a site: the data-access API (cohorts) and the imaging API (images).

The prod platform sends FLIP apps' data calls here. The HTTP client is the next issue's work: until then every
call raises PlatformError saying which service and which variables it needs, so a prod run fails at the app's first
data call with that reason instead of reading something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from flip.constants import ResourceType
from flip.errors import PlatformError

if TYPE_CHECKING:
    import pandas as pd

    from flip.settings import FlipSettings


@dataclass(frozen=True)
class TrustClient:
    """FLIP's trust services as a site's settings name them (``DATA_ACCESS_API_URL``, ``IMAGING_API_URL``, ...)."""

    data_access_api_url: str = "http://localhost:8001"
    imaging_api_url: str = "http://localhost:8002"
    net_id: str = "default"
    key_header: str = "X-Trust-Internal-Service-Key"
    key: SecretStr = field(default=SecretStr(""), repr=False)

    @classmethod
    def from_settings(cls, settings: FlipSettings) -> TrustClient:
        return cls(data_access_api_url=settings.data_access_api_url, imaging_api_url=settings.imaging_api_url,
                   net_id=settings.net_id, key_header=settings.trust_internal_service_key_header,
                   key=settings.trust_internal_service_key)

    @staticmethod
    def _not_yet(call: str, service: str, variables: str) -> PlatformError:
        return PlatformError(f"not configured: {call} needs the trust's {service} ({variables}); flip does not call "
                             f"FLIP's trust services yet (run with LOCAL_DEV=true / FLIP_ENV=dev and DEV_DATAFRAME, "
                             f"DEV_IMAGES_DIR for local data)")

    def get_dataframe(self, project_id: str, query: str) -> pd.DataFrame:
        """The cohort of ``query`` (data-access API). Not implemented yet: raises PlatformError."""
        raise self._not_yet("get_dataframe", "data-access API", "DATA_ACCESS_API_URL, TRUST_INTERNAL_SERVICE_KEY")

    def download_images(self, project_id: str, accession_id: str, resources: list[ResourceType]) -> Path:
        """The folder of an accession's images (imaging API). Not implemented yet: raises PlatformError."""
        raise self._not_yet("get_by_accession_number", "imaging API",
                            "IMAGING_API_URL, NET_ID, TRUST_INTERNAL_SERVICE_KEY")

    def add_resource(self, project_id: str, accession_id: str, scan_id: str, resource_id: str,
                     files: list[str]) -> None:
        """Upload files to an accession's scan (imaging API). Not implemented yet: raises PlatformError."""
        raise self._not_yet("add_resource", "imaging API", "IMAGING_API_URL, NET_ID, TRUST_INTERNAL_SERVICE_KEY")
