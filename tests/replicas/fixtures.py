"""Running replicas for tests: a FLIP hub with two trusts on one model, and one trust's services with a cohort.

Import the fixtures into a test module (``from tests.replicas.fixtures import hub, trust``); each starts real
uvicorn servers on 127.0.0.1 and stops them (threads joined) when the test ends.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from flip.platform.hub import HubPlatform
from flip.platform.trust import TrustClient
from tests.replicas.crypto import encrypt_project_id, new_key
from tests.replicas.hub import HubReplica
from tests.replicas.serve import Served
from tests.replicas.trust import COHORT_QUERY, DataAccessReplica, ImagingReplica, write_omop_db, write_store

HUB_KEY = "hub-internal-key-never-at-a-site"
USER_TOKEN = "hub-user-token-for-flip-status"
MODEL_ID = "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90"
SITES = ("site-1", "site-2")


@dataclass
class Hub:
    replica: HubReplica
    served: Served
    trusts: dict[str, str]  # site -> trust id
    tmp: Path

    @property
    def url(self) -> str:
        """``FLIP_API_INTERNAL_URL``: the base with ``/api``."""
        return self.served.url + "/api"

    def platform(self, key: str | None = HUB_KEY, **kwargs) -> HubPlatform:
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("backoff", 0.05)
        kwargs.setdefault("user_token", SecretStr(USER_TOKEN))
        local_dir = kwargs.pop("local_dir", self.tmp / "server")
        return HubPlatform(self.url, SecretStr(key) if key else None, local_dir, **kwargs)


@contextlib.contextmanager
def running_hub(
    tmp: Path,
    key: str | None = HUB_KEY,
    header: str = "X-Internal-Service-Key",
    model_id: str = MODEL_ID,
    s3: dict | None = None,
) -> Iterator[Hub]:
    """A hub replica with one trust per site (FL kit slot = the site's name) and ``model_id`` on both."""
    tmp.mkdir(parents=True, exist_ok=True)
    replica = HubReplica(tmp / "hub.sqlite", key, header=header, user_token=USER_TOKEN, s3=s3)
    trusts = {site: replica.add_trust(f"Trust {site[-1]}", site, code=f"T{site[-1]}") for site in SITES}
    replica.add_model(model_id, list(trusts.values()))
    with Served(replica.app, "hub") as served:
        yield Hub(replica, served, trusts, tmp)


@dataclass
class Trust:
    """One trust's data-access and imaging replicas, its cohort and the encrypted project id of the model."""

    data: DataAccessReplica
    imaging: ImagingReplica
    data_served: Served
    imaging_served: Served
    key: str
    images: Path
    project_id: str
    encrypted_project_id: str
    cohort: list[tuple[str, int]] = field(default_factory=list)
    net_id: str = "net-1"

    def client(self, **changes) -> TrustClient:
        values = dict(
            data_access_api_url=self.data_served.url,
            imaging_api_url=self.imaging_served.url,
            net_id=self.net_id,
            key=SecretStr(self.key),
            images_dir=str(self.images),
            timeout=2.0,
            attempts=2,
            backoff=0.05,
        )
        values.update(changes)
        return TrustClient(**values)

    def site_env(self) -> dict[str, str]:
        """The site's trust variables (a FLIP_SITE_ENV entry)."""
        return {
            "DATA_ACCESS_API_URL": self.data_served.url,
            "IMAGING_API_URL": self.imaging_served.url,
            "NET_ID": self.net_id,
            "TRUST_INTERNAL_SERVICE_KEY": self.key,
            "IMAGES_DIR": str(self.images),
        }


def digits_cohort(prefix: str, start: int, count: int) -> tuple[list[tuple[str, int]], list[tuple[str, np.ndarray]]]:
    """``count`` digits of scikit-learn's set from ``start``: (accession, label) rows and (accession, pixels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows, images = [], []
    for i in range(start, start + count):
        accession = f"{prefix}{i:05d}"
        rows.append((accession, int(digits.target[i])))
        images.append((accession, digits.images[i].astype(np.uint16)))
    return rows, images


@contextlib.contextmanager
def running_trust(
    tmp: Path,
    name: str = "A",
    key: str | None = None,
    start: int = 0,
    count: int = 24,
    aes_key: str | None = None,
    project_id: str | None = None,
    net_id: str = "net-1",
    threshold: int = 10,
) -> Iterator[Trust]:
    """A trust with ``count`` accessions (real DICOM files, labels in an OMOP-shaped SQLite database)."""
    tmp.mkdir(parents=True, exist_ok=True)
    key = key or f"trust-{name}-key"
    aes_key = aes_key or new_key()
    project_id = project_id or str(uuid.uuid4())
    cohort, images = digits_cohort(f"ACC-{name}-", start, count)
    db = write_omop_db(tmp / "omop.sqlite", cohort)
    store = write_store(tmp / "xnat", project_id, images)
    data = DataAccessReplica(db, key, aes_key, threshold=threshold)
    imaging = ImagingReplica(tmp / "images", store, key, aes_key)
    (tmp / "images").mkdir(exist_ok=True)
    with Served(data.app, f"data-access-{name}") as data_served, Served(imaging.app, f"imaging-{name}") as img_served:
        yield Trust(
            data,
            imaging,
            data_served,
            img_served,
            key,
            tmp / "images",
            project_id,
            encrypt_project_id(project_id, aes_key),
            cohort,
            net_id,
        )


@pytest.fixture
def hub(tmp_path) -> Iterator[Hub]:
    with running_hub(tmp_path / "hub") as running:
        yield running


@pytest.fixture
def trust(tmp_path) -> Iterator[Trust]:
    with running_trust(tmp_path / "trust") as running:
        yield running


__all__ = [
    "COHORT_QUERY",
    "HUB_KEY",
    "MODEL_ID",
    "SITES",
    "USER_TOKEN",
    "Hub",
    "Trust",
    "digits_cohort",
    "hub",
    "running_hub",
    "running_trust",
    "trust",
]
