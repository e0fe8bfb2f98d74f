"""Settings (DESIGN.md's table) and the FLIP() platform factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from flip import FLIP
from flip.errors import SettingsError
from flip.platform.dev import LocalPlatform
from flip.platform.hub import HubPlatform
from flip.settings import load_settings

pytestmark = pytest.mark.unit


def test_defaults():
    settings = load_settings()
    assert settings.env == "dev"
    assert settings.models_bucket == "flip-models"
    assert settings.local_dir == Path("./.flip")
    assert settings.hub_url is None and settings.hub_api_key is None
    assert settings.s3_create_bucket is False and settings.s3_sse is None


def test_reads_flip_prefixed_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLIP_MODELS_BUCKET", "hospital-models")
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path))
    monkeypatch.setenv("FLIP_S3_CREATE_BUCKET", "true")
    settings = load_settings()
    assert (settings.models_bucket, settings.local_dir, settings.s3_create_bucket) == ("hospital-models", tmp_path, True)


@pytest.mark.parametrize("bucket", ["Bad_Bucket", "ab", "-leading", "a..b", "192.168.1.1", "x" * 64])
def test_bad_bucket_is_named(monkeypatch, bucket):
    monkeypatch.setenv("FLIP_MODELS_BUCKET", bucket)
    with pytest.raises(SettingsError, match=r"FLIP_MODELS_BUCKET: bucket name .* is invalid: a bucket name is 3-63"):
        load_settings()


def test_bad_env_is_named(monkeypatch):
    monkeypatch.setenv("FLIP_ENV", "staging")
    with pytest.raises(SettingsError, match=r"FLIP_ENV: Input should be 'dev' or 'prod'"):
        load_settings()


def test_bad_hub_url_is_named_and_the_key_never_echoed(monkeypatch):
    monkeypatch.setenv("FLIP_ENV", "prod")
    monkeypatch.setenv("FLIP_HUB_URL", "ftp://hub")
    monkeypatch.setenv("FLIP_HUB_API_KEY", "s3cr3t-hub-key")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "FLIP_HUB_URL: hub URL 'ftp://hub' is invalid" in str(err.value) and "s3cr3t-hub-key" not in str(err.value)


def test_secret_is_not_printed(monkeypatch):
    monkeypatch.setenv("FLIP_ENV", "prod")
    monkeypatch.setenv("FLIP_HUB_URL", "https://hub.example")
    monkeypatch.setenv("FLIP_HUB_API_KEY", "s3cr3t-hub-key")
    settings = load_settings()
    assert "s3cr3t-hub-key" not in repr(settings) and "s3cr3t-hub-key" not in str(settings.model_dump())
    assert settings.hub_api_key.get_secret_value() == "s3cr3t-hub-key"


def test_flip_factory_gives_the_dev_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path))
    platform = FLIP()
    assert isinstance(platform, LocalPlatform) and platform.local_dir == tmp_path.resolve()


def test_flip_prod_gives_the_hub_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("FLIP_ENV", "prod")
    monkeypatch.setenv("FLIP_HUB_URL", "https://hub.example/")
    monkeypatch.setenv("FLIP_HUB_API_KEY", "k")
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path))
    platform = FLIP()
    assert isinstance(platform, HubPlatform) and platform.hub_url == "https://hub.example"
    platform.require_hub()
