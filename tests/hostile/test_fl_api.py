"""Hostile inputs to the FL API service (``flip api serve``): bundle URLs that point elsewhere or carry a secret, paths
that climb out of the transfer folder or the bundle root, a key open to other users, no key at all.

Each test failed before the service existed (flip had no ``flip.api``: the import fails) and names what FLIP's own FL
API does with the same input where that is the weakness guarded against (its notes: flip-fl-api.md §3.2, §6.7).
Requests go to a real uvicorn on 127.0.0.1 whose admin kit is no kit: every refusal here comes before the FL server
is asked (a request that got that far would be a 502)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flip.api.app import create_app
from flip.api.bundle import check_urls
from flip.api.flare import Flare
from flip.api.settings import ServiceConfig, load_api_settings, read_key
from flip.errors import ApiError, SettingsError
from tests.conftest import REPO, clean_env
from tests.replicas.serve import Served
from tests.unit.test_fl_api_http import HEADER, KEY, call

MODEL = "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90"
SIGNATURE = "X-Amz-Signature=0123456789abcdef"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    (root / "app").mkdir()
    (root / "app" / "trainer.py").write_text("x")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("not for the bundle")
    (root / "app" / "link.txt").symlink_to(outside / "secret.txt")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    config = ServiceConfig(key=KEY, bundle_bucket="flip-bundles", bundle_root=root.resolve())
    with Served(create_app(config, Flare(tmp_path_factory.mktemp("no-kit"), "admin@flip.org", 1)), "fl-api") as s:
        yield s, root, outside


def _upload(served, *urls: str, model_id: str = MODEL):
    body = {"project_id": "p", "cohort_query": "q", "trusts": ["Trust_1"], "bundle_urls": list(urls)}
    return call(served, "POST", f"/upload_app/{model_id}", body)


@pytest.mark.http
def test_a_presigned_https_url_of_an_unlisted_host_is_refused_naming_it_never_its_query(service):
    """FLIP's hub sends pre-signed https URLs; FLIP's FL API fetches any URL (and writes an error body as a file).
    Ours fetches links only from the hosts it lists (none here), and never echoes the signature."""
    served, root, _ = service
    status, reply = _upload(served, f"https://bucket.s3.amazonaws.com/{MODEL}/app/custom/trainer.py?{SIGNATURE}")
    assert status == 400
    assert reply["detail"] == (
        f"bundle URL https://bucket.s3.amazonaws.com/{MODEL}/app/custom/trainer.py?... is not "
        f"allowed: https://bucket.s3.amazonaws.com is not a bundle host; allowed: "
        f"s3://flip-bundles/<key> (FLIP_API_BUNDLE_BUCKET) or file:// under {root.resolve()} "
        "(FLIP_API_BUNDLE_ROOT)"
    )
    assert "Signature" not in json.dumps(reply)
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "ftp://host/x",
        "gs://flip-bundles/x",
        "/etc/passwd",
        "s3:flip-bundles/x",
    ):
        status, reply = _upload(served, url)
        assert status == 400 and "is not allowed" in reply["detail"], url


@pytest.mark.unit
@pytest.mark.parametrize(
    "url, why",
    [
        ("https://169.254.169.254/latest/meta-data/iam", "https://169.254.169.254 is not a bundle host"),
        ("https://flip-bundles.s3.example.org.evil.org/m/t.py", "flip-bundles.s3.example.org.evil.org is not a"),
        ("https://flip-bundles.s3.example.org@evil.org/m/t.py", "it carries credentials"),
        ("https://user:pw@flip-bundles.s3.example.org/m/t.py", "it carries credentials"),
        ("https://flip-bundles.s3.example.org:8443/m/t.py", "https://flip-bundles.s3.example.org:8443 is not a bundle"),
        ("http://flip-bundles.s3.example.org/m/t.py", "http://flip-bundles.s3.example.org is not a bundle host"),
        ("https://flip-bundles.s3.example.org/m/../../etc/passwd", "its path is not a relative path of safe names"),
        ("https://flip-bundles.s3.example.org/m/%2e%2e/x", "its path is not a relative path of safe names"),
        (f"https://flip-bundles.s3.example.org/m/t.py?{SIGNATURE}#frag", "it carries a fragment"),
        ("https://flip-bundles.s3.example.org:99999/m/t.py", "its port is not a number"),
        ("https://flip-bundles.s3.example.org/m/t.py?X-Amz-Signature=\u00e9", "it holds a non-ASCII character"),
    ],
)
def test_a_link_elsewhere_than_the_listed_bundle_host_is_refused_before_it_is_fetched(url, why):
    """With the hub's S3 host listed, a link is fetched from that host (scheme, port) only: the instance metadata
    address, a look-alike host, credentials hiding another host, another port or plain http are refused unread."""
    from flip.api.settings import BundleHost

    config = ServiceConfig(key=KEY, bundle_hosts=frozenset({BundleHost("flip-bundles.s3.example.org")}))
    with pytest.raises(ApiError, match="is not allowed") as caught:
        check_urls([url], config)
    assert why in str(caught.value) and "Signature" not in str(caught.value) and "pw" not in str(caught.value)


@pytest.mark.http
@pytest.mark.parametrize(
    "url, why",
    [
        ("s3://other-bucket/m/app/custom/trainer.py", "bucket 'other-bucket' is not the bundle bucket"),
        ("s3://flip-bundles/m/../../other/key", "its key is not a relative path of safe names"),
        ("s3://flip-bundles/m/%2e%2e/x", "its key is not a relative path of safe names"),
        ("s3://flip-bundles//abs", "its key is not a relative path of safe names"),
        (f"s3://flip-bundles/m/trainer.py?{SIGNATURE}", "it carries a query or a fragment"),
        ("s3://user:secret@flip-bundles/m/trainer.py", "it carries credentials or a port"),
        ("s3://flip-bundles/m/train er.py", "whitespace or a control character"),
        ("s3://flip-bundles/m/trainer.py\n", "whitespace or a control character"),
    ],
)
def test_an_s3_url_outside_the_bundle_bucket_or_with_a_climbing_key_is_refused(service, url, why):
    served, _, _ = service
    status, reply = _upload(served, url)
    assert status == 400 and why in reply["detail"], reply
    assert "secret" not in reply["detail"] and "Signature" not in reply["detail"]


@pytest.mark.http
def test_a_file_url_outside_the_bundle_root_is_refused(service):
    """Without a root, a file:// bundle could read any file the service can (e.g. the admin kit's private key)."""
    served, root, outside = service
    cases = {
        "file:///etc/passwd": "outside the bundle root",
        f"file://{root}/../{outside.name}/secret.txt": "holds '..'",
        f"file://{root}/escape/secret.txt": "outside the bundle root (links resolved)",
        f"file://{root}/app/link.txt": "outside the bundle root (links resolved)",
        f"file://{root}/app": "link.txt links outside the bundle root",  # a folder with a link out of the root
        f"file://elsewhere{root}/app/trainer.py": "host 'elsewhere'",
        f"file://{root}/absent.py": "no such file or folder",
    }
    for url, why in cases.items():
        status, reply = _upload(served, url)
        assert status == 400 and why in reply["detail"], (url, reply)
        assert "not for the bundle" not in json.dumps(reply)


@pytest.mark.http
@pytest.mark.parametrize("model_id", ["..", "x", "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90x", "%2E%2E"])
def test_a_model_id_that_is_not_a_uuid_is_refused_before_anything_is_staged(service, model_id):
    """FLIP's FL API stages into <transfer>/<model_id> unchecked and deletes what is there first: ``..`` would make
    it delete the transfer folder's parent (the admin kit)."""
    served, root, _ = service
    status, reply = _upload(served, f"file://{root}/app/trainer.py", model_id=model_id)
    assert status == 400 and "model_id must be a UUID" in reply["detail"], reply


@pytest.mark.http
@pytest.mark.parametrize(
    "path",
    [
        "/submit_job/..",
        "/submit_job/%2E%2E",
        "/submit_job/.hidden",
        "/submit_job/a%0Ab",
        "/abort_job/..",
        "/abort_job/%2E%2E",
        "/abort_job/a%0Ab",
    ],
)
def test_a_job_folder_or_job_id_that_climbs_or_hides_is_refused(service, path):
    served, _, _ = service
    status, reply = call(served, "DELETE" if path.startswith("/abort") else "POST", path)
    assert status == 400 and "is invalid: expected 1-128 letters" in reply["detail"], reply


@pytest.mark.http
def test_a_trust_that_is_not_a_name_is_refused(service):
    served, root, _ = service
    body = {"project_id": "p", "cohort_query": "q", "trusts": [], "bundle_urls": [f"file://{root}/app/trainer.py"]}
    assert call(served, "POST", f"/upload_app/{MODEL}", body)[0] == 422  # at least one trust


@pytest.mark.unit
def test_a_file_named_twice_in_a_bundle_is_refused(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "trainer.py").write_text("x")
    config = ServiceConfig(key=KEY, bundle_bucket="flip-bundles", bundle_root=tmp_path.resolve())
    with pytest.raises(ApiError, match="the file is named twice"):
        check_urls([f"file://{tmp_path}/app/trainer.py", f"file://{tmp_path}/app"], config)
    with pytest.raises(ApiError, match="the file is named twice"):
        check_urls(["s3://flip-bundles/m/x.py", "s3://flip-bundles/m/x.py"], config)


@pytest.mark.unit
def test_a_key_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "key"
    path.write_text(KEY)
    os.chmod(path, 0o644)
    with pytest.raises(SettingsError, match=r"FLIP_API_KEY_FILE: .* is open to other users \(mode 0644\)"):
        read_key(load_api_settings(key_file=path))


@pytest.mark.unit
@pytest.mark.parametrize("key", ["short", "a key with spaces in it", "k" * 15])
def test_a_weak_key_is_refused_never_shown(key):
    with pytest.raises(SettingsError, match="at least 16 printable ASCII characters") as caught:
        read_key(load_api_settings(key=key))
    assert key not in str(caught.value)


@pytest.mark.unit
def test_the_service_does_not_start_without_a_key(tmp_path):
    """FLIP's FL API has no authentication: whoever reaches its port drives the network. Ours refuses to start
    without a key, except on a loopback address with --insecure-loopback."""
    kit = tmp_path / "admin@flip.org"
    (kit / "startup").mkdir(parents=True)
    (kit / "startup" / "fed_admin.json").write_text(json.dumps({"admin": {"username": "admin@flip.org"}}))
    env = clean_env("FLIP_", "AWS_")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for extra, message in (
        ([], "the FL API needs a key: set FLIP_API_KEY_FILE"),
        (["--insecure-loopback"], "on a loopback address only (127.0.0.1, ::1, localhost), not on '0.0.0.0'"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "flip.cli", "api", "serve", "--admin-dir", str(kit), "--host", "0.0.0.0", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert (
        HEADER
        in subprocess.run(
            [sys.executable, "-m", "flip.cli", "api", "serve", "--help"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )
