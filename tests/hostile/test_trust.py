"""Hostile answers of a trust's services to a site's trust clients (issue 17), against the trust replicas (real
uvicorn servers on 127.0.0.1).

Before issue 17 the prod platform's trust seam raised ``PlatformError("not configured: ...")`` for every data call:
each test below failed on that code (it expected the named TrustServiceError or SettingsError, the refused path,
the bounded read, which did not exist; TrustServiceError itself was new). The docstrings say what each guards.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
from pydantic import SecretStr

from flip.constants import ResourceType
from flip.errors import SettingsError, TrustServiceError
from flip.platform.trust import DATA_ACCESS, TrustClient
from flip.settings import load_settings
from tests.replicas.fixtures import COHORT_QUERY, trust  # noqa: F401 - fixture

pytestmark = pytest.mark.http

PATIENT = "PATIENT-4471-QX"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_500_is_retried_then_named(trust):
    """One 500 is retried and the cohort arrives; a 500 that persists is named after the attempts."""
    trust.data.faults.fail = 1
    assert len(trust.client().get_dataframe(trust.encrypted_project_id, COHORT_QUERY)) == len(trust.cohort)
    assert len(trust.data.received) == 2
    trust.imaging.faults.fail = 10
    with pytest.raises(
        TrustServiceError,
        match=r"imaging service unreachable after 2 attempts \(HTTP 500\) for POST "
        r"/download/images/net-1",
    ):
        trust.client().download_images(trust.encrypted_project_id, trust.cohort[0][0], [ResourceType.DICOM])


def test_a_refused_key_is_named_not_retried_and_never_shown(trust):
    """A 401 names the variable to check and is not retried; neither key is in the message."""
    with pytest.raises(
        TrustServiceError,
        match=r"data-access service refused the API key \(HTTP 401\): check "
        r"TRUST_INTERNAL_SERVICE_KEY",
    ) as err:
        trust.client(key=SecretStr("wrong-trust-key")).get_dataframe(trust.encrypted_project_id, COHORT_QUERY)
    assert "wrong-trust-key" not in str(err.value) and trust.key not in str(err.value)
    assert len(trust.data.received) == 1


def test_no_trust_key_sends_nothing(trust):
    """An unset key fails before any request (FLIP would send an empty header)."""
    with pytest.raises(SettingsError, match="TRUST_INTERNAL_SERVICE_KEY is not set"):
        trust.client(key=SecretStr("")).get_dataframe(trust.encrypted_project_id, "SELECT 1")
    assert trust.data.received == []


def test_a_trust_service_that_is_down_is_named(trust):
    client = trust.client(data_access_api_url=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(
        TrustServiceError,
        match=r"data-access service unreachable after 2 attempts "
        r"\(ConnectionRefusedError\) for POST /cohort/dataframe",
    ):
        client.get_dataframe(trust.encrypted_project_id, COHORT_QUERY)


def test_a_dataframe_without_accession_id_is_refused(trust):
    """Every cohort has an accession_id column (the imaging service's key): one without it is a named error."""
    trust.data.faults.drop_accession_column = True
    with pytest.raises(
        TrustServiceError,
        match=r"answered POST /cohort/dataframe with a cohort without an "
        r"'accession_id' column \(1 other columns\)",
    ):
        trust.client().get_dataframe(trust.encrypted_project_id, COHORT_QUERY)


@pytest.mark.parametrize(
    "answer, why",
    [
        ([{"accession_id": PATIENT, "label": 1}], r"something other than column-oriented JSON"),
        ({"accession_id": [PATIENT, "B"], "label": [1]}, r"columns of different lengths \(\[1, 2\]\)"),
        ({"accession_id": PATIENT}, r"something other than column-oriented JSON"),
    ],
)
def test_a_dataframe_of_another_shape_is_refused_without_its_values(trust, answer, why):
    trust.data.faults.answer = answer
    with pytest.raises(TrustServiceError, match=why) as err:
        trust.client().get_dataframe(trust.encrypted_project_id, COHORT_QUERY)
    assert PATIENT not in str(err.value)


def test_a_body_that_is_not_json_is_named_but_never_shown(trust):
    trust.data.faults.raw = f"<html>{PATIENT}</html>".encode()
    with pytest.raises(TrustServiceError, match=r"with a body that is not JSON \(\d+ bytes, not shown\)") as err:
        trust.client().get_dataframe(trust.encrypted_project_id, COHORT_QUERY)
    assert PATIENT not in str(err.value)


@pytest.mark.parametrize("outside", ["/etc", "/tmp", "{images}/../elsewhere", "relative/path", ""])
def test_an_images_path_outside_the_images_root_is_refused(trust, outside):
    """The imaging service's answer names the folder the app reads: a path outside IMAGES_DIR is refused."""
    (trust.images.parent / "elsewhere").mkdir(exist_ok=True)
    trust.imaging.faults.path_outside = outside.format(images=trust.images)
    with pytest.raises(
        TrustServiceError,
        match=r"imaging service answered POST /download/images/net-1 for accession "
        r"#[0-9a-f]{12} (with a path outside IMAGES_DIR|without a \"path\")",
    ):
        trust.client().download_images(trust.encrypted_project_id, trust.cohort[0][0], [ResourceType.DICOM])


def test_a_symlink_out_of_the_images_root_is_refused(trust, tmp_path):
    """A path inside IMAGES_DIR that is a symlink to elsewhere resolves outside it: refused."""
    elsewhere = tmp_path / "secret-folder"
    elsewhere.mkdir()
    (trust.images / "link").symlink_to(elsewhere)
    trust.imaging.faults.path_outside = str(trust.images / "link")
    with pytest.raises(TrustServiceError, match="with a path outside IMAGES_DIR"):
        trust.client().download_images(trust.encrypted_project_id, trust.cohort[0][0], [ResourceType.DICOM])


def test_an_images_answer_inside_the_root_that_is_no_folder_is_refused(trust):
    (trust.images / "file.dcm").write_bytes(b"x")
    trust.imaging.faults.path_outside = str(trust.images / "file.dcm")
    with pytest.raises(TrustServiceError, match="with a path inside IMAGES_DIR that is not a folder"):
        trust.client().download_images(trust.encrypted_project_id, trust.cohort[0][0], [ResourceType.DICOM])


@pytest.mark.parametrize("announced", [False, True], ids=["streamed", "content-length"])
def test_a_huge_answer_is_refused_at_the_bound(trust, announced):
    """A 40 MiB answer with a 1 MiB bound: refused after at most 1 MiB + 1 byte read (or unread when announced),
    not retried."""
    trust.data.faults.huge, trust.data.faults.huge_announced = 40 * 1024 * 1024, announced
    started = time.monotonic()
    with pytest.raises(
        TrustServiceError,
        match=r"data-access service answered POST /cohort/dataframe with more than "
        r"1048576 bytes: refused unread",
    ):
        trust.client(max_bytes=1024 * 1024).get_dataframe(trust.encrypted_project_id, COHORT_QUERY)
    assert len(trust.data.received) == 1 and time.monotonic() - started < 10


def test_a_plain_http_trust_url_is_refused_unless_listed(monkeypatch):
    """FLIP's trust services sit on a private network over http: allowed only for hosts in FLIP_HTTP_HOSTS."""
    client = TrustClient(data_access_api_url="http://data-access-api:8000", key=SecretStr("k"))
    with pytest.raises(
        SettingsError,
        match=r"DATA_ACCESS_API_URL: data-access service URL 'http://data-access-api:"
        r"8000' is invalid: http:// sends the key in clear text.*FLIP_HTTP_HOSTS",
    ):
        client.get_dataframe("p", "SELECT 1")
    monkeypatch.setenv("FLIP_HTTP_HOSTS", "data-access-api")
    listed = TrustClient.from_settings(load_settings())
    assert listed.http_hosts == {"data-access-api"}
    assert listed._base(DATA_ACCESS, "http://data-access-api:8000") == "http://data-access-api:8000"


def test_site_env_carries_no_hub_variable_and_never_shows_a_key(monkeypatch):
    """FLIP_SITE_ENV may set only a site's trust variables: the hub's key cannot reach a site this way."""
    monkeypatch.setenv("FLIP_SITE_ENV", json.dumps({"site-1": {"INTERNAL_SERVICE_KEY": "hub-key-xyz"}}))
    with pytest.raises(SettingsError, match=r"FLIP_SITE_ENV\['site-1'\] may set only a site's trust variables") as err:
        load_settings()
    assert "hub-key-xyz" not in str(err.value)
    monkeypatch.setenv("FLIP_SITE_ENV", json.dumps({"site-1": {"TRUST_INTERNAL_SERVICE_KEY": "bad\nkey-xyz"}}))
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "key-xyz" not in str(err.value) and "FLIP_SITE_ENV" in str(err.value)
    monkeypatch.setenv("FLIP_SITE_ENV", json.dumps({"../x": {}}))
    with pytest.raises(SettingsError, match=r"FLIP_SITE_ENV: site name '../x' is invalid"):
        load_settings()
    assert os.environ["FLIP_SITE_ENV"]
