"""Shared fixtures: a real S3 server (SeaweedFS weed mini) and an isolated environment for flip settings."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from flip.simulate import prepare_serialization
from flip.storage.weed import WeedS3

REPO = Path(__file__).resolve().parent.parent

# As NVFlare's runtime does at start: its decomposers first, so a test helper's fobs round trip serializes a Shareable
# as a site or server would, and a simulator forked from this process later inherits the right registry.
prepare_serialization()

#: the test tiers (pyproject.toml registers them): every test carries at least one
TIERS = ("unit", "s3", "http", "simulator", "e2e")


def unmarked(items) -> list[str]:
    """The node ids of the collected ``items`` that carry none of the tier markers."""
    return [item.nodeid for item in items if not any(item.get_closest_marker(tier) for tier in TIERS)]


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects anything: an unmarked test is never silently skipped
def pytest_collection_modifyitems(config, items):
    missing = unmarked(items)
    if missing:
        raise pytest.UsageError(
            f"{len(missing)} test(s) carry no tier marker (one of {', '.join(TIERS)}; see pyproject.toml): "
            + ", ".join(missing)
        )


def clean_env(*prefixes: str) -> dict:
    """A copy of this process's environment without the variables whose names start with any of ``prefixes``."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def presigned_link(weed: WeedS3, bucket: str, key: str, expires: int = 3600) -> str:
    """A pre-signed GET link (SigV4, path style) to ``bucket/key`` on ``weed``, as FLIP's hub sends bundle files."""
    import boto3
    from botocore.config import Config

    signer = boto3.client(
        "s3",
        endpoint_url=weed.endpoint,
        aws_access_key_id=weed.access_key,
        aws_secret_access_key=weed.secret_key,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    return signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)


@contextmanager
def environ(**values: str | None):
    """Set (or, with None, remove) environment variables for the block, restoring them after."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def weed(tmp_path_factory):
    """One weed mini for the whole session, authentication enforced, bucket flip-models created."""
    server = WeedS3(bucket="flip-models", root=tmp_path_factory.mktemp("weed"))
    server.start()
    assert server.alive(), "weed mini exited right after start"
    yield server
    server.stop(graceful=False)  # its data goes with the session's temporary folder: nothing to flush


@pytest.fixture
def s3_env(weed, monkeypatch):
    """The session's weed server, its endpoint and credentials in this test's environment (as a run reads them)."""
    for key, value in weed.env.items():
        monkeypatch.setenv(key, value)
    return weed


@pytest.fixture(scope="session", autouse=True)
def _no_stray_settings_in_session():
    """Session and module fixtures (weed, simulator runs) also start without the caller's FLIP_* variables."""
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("FLIP_"):
                patch.delenv(key)
        yield


@pytest.fixture(autouse=True)
def _no_stray_settings(monkeypatch):
    """Tests start from flip's defaults: no FLIP_* variable leaks in from the caller's shell."""
    for key in list(os.environ):
        if key.startswith("FLIP_"):
            monkeypatch.delenv(key)
