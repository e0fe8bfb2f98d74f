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
    assert (settings.models_bucket, settings.local_dir, settings.s3_create_bucket) == (
        "hospital-models",
        tmp_path,
        True,
    )


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
    monkeypatch.setenv("FLIP_HUB_URL", "https://hub.example/api")
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
    monkeypatch.setenv("FLIP_HUB_URL", "https://hub.example/api/")
    monkeypatch.setenv("FLIP_HUB_API_KEY", "k")
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path))
    platform = FLIP()
    assert isinstance(platform, HubPlatform) and platform.hub_url == "https://hub.example/api"
    platform.require_hub()


# -- FLIP's variable names and ours (issue 17) --------------------------------------------------------------------
FLIP_AND_OURS = [
    "FLIP_API_INTERNAL_URL",
    "FLIP_HUB_URL",
    "INTERNAL_SERVICE_KEY",
    "FLIP_HUB_API_KEY",
    "INTERNAL_SERVICE_KEY_FILE",
    "UPLOADED_FEDERATED_DATA_BUCKET",
    "FLIP_MODELS_BUCKET",
    "INTERNAL_SERVICE_KEY_HEADER",
    "FLIP_HTTP_HOSTS",
]


@pytest.fixture
def no_flip_names(monkeypatch):
    for var in FLIP_AND_OURS:
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    "flip_name, ours, value, field, expected",
    [
        ("FLIP_API_INTERNAL_URL", "FLIP_HUB_URL", "https://hub.example/api/", "hub_url", "https://hub.example/api"),
        ("UPLOADED_FEDERATED_DATA_BUCKET", "FLIP_MODELS_BUCKET", None, "models_bucket", "results-bucket"),
    ],
)
def test_flips_name_or_ours_alone_sets_the_setting(monkeypatch, no_flip_names, flip_name, ours, value, field, expected):
    flip_value = value or "s3://results-bucket"
    our_value = value or "results-bucket"
    monkeypatch.setenv(flip_name, flip_value)
    assert getattr(load_settings(), field) == expected
    monkeypatch.delenv(flip_name)
    monkeypatch.setenv(ours, our_value)
    assert getattr(load_settings(), field) == expected
    monkeypatch.setenv(flip_name, flip_value)  # both, agreeing
    assert getattr(load_settings(), field) == expected


def test_the_key_by_flips_name_or_ours(monkeypatch, no_flip_names):
    monkeypatch.setenv("INTERNAL_SERVICE_KEY", "k-1")
    assert load_settings().hub_api_key.get_secret_value() == "k-1"
    monkeypatch.setenv("FLIP_HUB_API_KEY", "k-1")
    assert load_settings().hub_api_key.get_secret_value() == "k-1"
    monkeypatch.setenv("INTERNAL_SERVICE_KEY", "")  # FLIP's default "" is unset
    assert load_settings().hub_api_key.get_secret_value() == "k-1"


def test_flips_names_defaults_and_the_bucket_url(monkeypatch, no_flip_names):
    settings = load_settings()
    assert (settings.hub_url, settings.hub_api_key, settings.models_bucket) == (None, None, "flip-models")
    assert settings.uploaded_federated_data_bucket == "s3://flip-models"
    assert settings.internal_service_key_header == "X-Internal-Service-Key"
    monkeypatch.setenv("FLIP_HTTP_HOSTS", "flip-api, Data-Access-Api")
    monkeypatch.setenv("FLIP_API_INTERNAL_URL", "http://flip-api:8000/api")
    settings = load_settings()
    assert settings.http_hosts == {"flip-api", "data-access-api"} and settings.hub_url == "http://flip-api:8000/api"
