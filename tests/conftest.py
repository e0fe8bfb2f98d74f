"""Shared fixtures: a real S3 server (SeaweedFS weed mini) and an isolated environment for flip settings."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from flip.storage.weed import WeedS3

REPO = Path(__file__).resolve().parent.parent


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
    server.stop()


@pytest.fixture(autouse=True)
def _no_stray_settings(monkeypatch):
    """Tests start from flip's defaults: no FLIP_* variable leaks in from the caller's shell."""
    for key in list(os.environ):
        if key.startswith("FLIP_"):
            monkeypatch.delenv(key)
