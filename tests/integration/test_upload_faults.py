"""Faults during a run's upload, on a real S3 server (weed mini) and a TCP fault proxy, without the simulator.

Each run is the standard job's server as flip.jobs writes it (tests/fakes.py ``Server.from_job``: its components
and workflows built from the job's config and run by NVFlare's own ServerRunner loop, the sites answering in
process), with a model of 6.4 MB so that every upload is multipart: the server's own code stages the run folder,
records ``upload_pending.json`` and uploads at END_RUN, and the fault hits that upload. For each fault: the run ends
in ERROR naming the cause, its workspace is intact (model, staged artifacts, upload_pending.json), then, once the
fault is removed, ``flip upload --resume`` completes, the manifest verifies, the registry serves the model the run
saved and the run folder is cleaned.

The same path in a real system (the simulator: a run whose upload fails ends in ERROR, and ``flip upload --resume``
completes it) is checked by tests/integration/test_methods.py, whose simulator runs upload to a missing bucket first.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from flip.cli import main as flip_cli
from flip.constants import FlipTask, RunFile
from flip.jobs import DEMO_APP_DIR, write_job
from flip.nvflare.components.persist_to_s3_and_cleanup import state_dict_from_checkpoint
from flip.storage.layout import run_prefix
from flip.storage.manifest import verify_run
from flip.storage.pending import is_log_file
from flip.storage.registry import ModelRegistry
from flip.storage.upload import abort_incomplete_uploads
from flip.storage.weed import WeedS3
from tests.conftest import environ
from tests.fakes import Server, good_update
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.s3

BIG_BUFFER = 1_600_000  # 6.4 MB of float32: the model is uploaded in two parts (5 MiB + the rest)
FAST_FAIL = {"AWS_MAX_ATTEMPTS": "2", "FLIP_S3_MULTIPART_THRESHOLD_MB": "5", "FLIP_S3_PART_SIZE_MB": "5"}


@pytest.fixture(scope="module")
def big_app(tmp_path_factory):
    """The demo app with a 6.4 MB buffer in its model, so that every upload is multipart."""
    app = tmp_path_factory.mktemp("big_app") / "app"
    shutil.copytree(DEMO_APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    models = app / "models.py"
    models.write_text(
        models.read_text()
        + f"""

class BigDigitsNet(DigitsNet):
    def __init__(self):
        super().__init__()
        self.register_buffer("lookup_table", torch.linspace(0, 1, {BIG_BUFFER}))


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return BigDigitsNet()
"""
    )
    return app


class FaultRun:
    """One run of the big standard job (one round, two sites) under a fault, and what it left."""

    def __init__(self, tmp: Path, big_app: Path, server: WeedS3, env: dict, before_run=None):
        self.model_id = str(uuid.uuid4())
        job = write_job(
            "standard", tmp / "jobs", model_id=self.model_id, num_rounds=1, skip_model_tests=True, app_dir=big_app
        )
        self.env = {**server.env, "FLIP_ENV": "dev", "FLIP_LOCAL_DIR": str(tmp / "flip"), **FAST_FAIL, **env}
        self.s3 = server
        with environ(**self.env):
            self.server = Server.from_job(tmp, job)
            if before_run:
                before_run(self.server)
            self.server.run(answers={FlipTask.TRAIN: good_update})
        self.workspace, self.folder = self.server.workspace, self.server.run_dir

    @property
    def statuses(self) -> list[dict]:
        return self.server.statuses()

    def assert_failed_and_intact(self, cause: str) -> None:
        final = self.statuses[-1]
        assert final["status"] == "ERROR", self.statuses
        assert cause in final["reason"], final["reason"]
        assert "Traceback" not in final["reason"]
        assert self.s3.secret_key not in final["reason"]
        assert (self.folder / RunFile.UPLOAD_PENDING).is_file()
        assert (self.folder / RunFile.STAGING_DIR / RunFile.GLOBAL_MODEL).is_file()
        assert (self.folder / "app_server" / "FL_global_model.pt").is_file()
        self.saved = state_dict_from_checkpoint(self.folder / "app_server" / "FL_global_model.pt")

    def resume(self, server: WeedS3, **env) -> int:
        with environ(**{**self.env, **server.env, **env}):
            return flip_cli(["upload", "--resume", str(self.workspace)])

    def assert_resumed(self, server: WeedS3) -> None:
        assert self.statuses[-1]["status"] == "RESULTS_UPLOADED", self.statuses
        client = server._client()
        prefix = run_prefix(self.model_id, self.statuses[-1]["run_id"])
        manifest = verify_run(client, server.bucket, prefix)
        assert RunFile.GLOBAL_MODEL in {o["key"] for o in manifest["objects"]}
        state = ModelRegistry(client, server.bucket).load(self.model_id)
        assert state["lookup_table"].shape == (BIG_BUFFER,)
        assert set(state) == set(self.saved) and all(torch.equal(state[k], self.saved[k]) for k in state)
        assert all(is_log_file(p.name) for p in self.folder.iterdir())
        assert not abort_incomplete_uploads(client, server.bucket, prefix)  # nothing unfinished left behind


@pytest.fixture
def own_weed(tmp_path):
    server = WeedS3(bucket="flip-models", root=tmp_path / "own_weed").start()
    yield server
    server.kill()  # a graceful stop waits 10 s for the connections this process still holds open
    server.stop()


def test_server_killed_before_the_upload(tmp_path, big_app, own_weed):
    own_weed.kill()  # SIGKILL by pid: the S3 server is gone before the run even starts
    assert not own_weed.alive()
    fault = FaultRun(tmp_path, big_app, own_weed, {})
    fault.assert_failed_and_intact("cannot reach the S3 server")
    own_weed.restart()
    assert fault.resume(own_weed) == 0
    fault.assert_resumed(own_weed)


def test_server_killed_in_the_middle_of_a_multipart_upload_then_network_cut_during_resume(tmp_path, big_app, own_weed):
    proxy = TcpProxy(own_weed.s3_port, trip_after=5_500_000, on_trip=own_weed.kill)
    try:
        fault = FaultRun(tmp_path, big_app, own_weed, {"AWS_ENDPOINT_URL_S3": proxy.endpoint})
    finally:
        proxy.close()
    assert proxy.tripped.is_set() and not own_weed.alive()
    fault.assert_failed_and_intact("results not uploaded: upload to flip-models/")
    own_weed.restart()
    client = own_weed._client()
    assert client.list_multipart_uploads(Bucket=own_weed.bucket).get("Uploads"), "the killed upload left parts"

    # the server is back, but the network drops in the middle of the resumed upload
    cut = TcpProxy(own_weed.s3_port, trip_after=3_000_000, cut=True)
    try:
        assert fault.resume(own_weed, AWS_ENDPOINT_URL_S3=cut.endpoint) == 2
    finally:
        cut.close()
    assert cut.tripped.is_set() and own_weed.alive()
    fault.assert_failed_and_intact("resume failed: upload to flip-models/")

    assert fault.resume(own_weed) == 0
    fault.assert_resumed(own_weed)


def test_wrong_secret(tmp_path, big_app, weed, caplog):
    caplog.set_level(logging.DEBUG)
    fault = FaultRun(tmp_path, big_app, weed, {"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    fault.assert_failed_and_intact("access denied, check the S3 credentials")
    assert "not-the-secret" not in fault.statuses[-1]["reason"]
    logged = [r.getMessage() for r in caplog.records]
    assert any("access denied" in line for line in logged)  # the server did log the failure...
    assert not [line for line in logged if "not-the-secret" in line]  # ...without the secret
    assert fault.resume(weed) == 0
    fault.assert_resumed(weed)


def test_bucket_missing(tmp_path, big_app, weed):
    fault = FaultRun(tmp_path, big_app, weed, {"FLIP_MODELS_BUCKET": "no-such-bucket"})
    fault.assert_failed_and_intact("bucket 'no-such-bucket' does not exist (set FLIP_S3_CREATE_BUCKET=true")
    # the run's bucket is the setting it ran with: resume with the same setting, now allowed to create it
    assert fault.resume(weed, FLIP_S3_CREATE_BUCKET="true", FLIP_MODELS_BUCKET="no-such-bucket") == 0
    assert fault.statuses[-1]["status"] == "RESULTS_UPLOADED"
    state = ModelRegistry(weed._client(), "no-such-bucket").load(fault.model_id)
    assert all(torch.equal(state[k], fault.saved[k]) for k in fault.saved)


def _make_read_only(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
    else:
        path.chmod(0o555)


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=True, capture_output=True)
    else:
        path.chmod(0o755)


def test_read_only_workspace_at_cleanup(tmp_path, big_app, weed):
    if os.geteuid() == 0 and shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: a read-only folder cannot be made")
    locked: list[Path] = []

    def lock_config(server: Server) -> None:  # the app's config folder cannot be deleted at cleanup
        config = server.run_dir / "app_server" / "config"
        (config / "config_fed_server.json").write_text("{}")
        _make_read_only(config)
        locked.append(config)

    try:
        fault = FaultRun(tmp_path, big_app, weed, {}, before_run=lock_config)
        final = fault.statuses[-1]
        assert final["status"] == "ERROR" and "but cleanup failed" in final["reason"], final
        assert f"verified at s3://{weed.bucket}/{fault.model_id}/" in final["reason"]
        assert (fault.folder / RunFile.UPLOAD_PENDING).is_file()
        # the upload itself was verified before anything was deleted
        prefix = run_prefix(fault.model_id, final["run_id"])
        verify_run(weed._client(), weed.bucket, prefix)
        fault.saved = ModelRegistry(weed._client(), weed.bucket).load(fault.model_id)  # cleanup may have begun
        with environ(**fault.env):
            assert flip_cli(["upload", "--resume", str(fault.folder)]) == 2  # still read-only: refused, named
        assert fault.statuses[-1]["status"] == "ERROR" and "cleanup" in fault.statuses[-1]["reason"]
    finally:
        for path in locked:
            _make_writable(path)
    assert fault.resume(weed) == 0
    fault.assert_resumed(weed)
