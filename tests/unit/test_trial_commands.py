"""The walk-through's own commands (issue 22 item 1): ``flip trial data`` (the demo's digits under the provisioned
site names, refusing a folder that is not its own), ``flip s3 serve --detach`` / ``flip s3 stop`` (the trial S3
server as a step, and how it stops), ``flip jobs export NAME --model-id/--new-model-id/--num-rounds`` (every
submission its own model id) and ``flip status MODEL_ID --wait`` (until the run ends). Before: none existed; the
checked-in job had one fixed model id."""

from __future__ import annotations

import json
import os
import stat
import uuid

import pytest

from flip.cli import main as flip_cli
from flip.jobs import DEFAULT_MODEL_ID
from flip.platform.dev import LocalPlatform
from flip.storage.service import serving_pid


def _model_id(job) -> str:
    config = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    ids = {c["args"]["model_id"] for c in config["components"] if "model_id" in c.get("args", {})}
    (model_id,) = ids
    return model_id


@pytest.mark.unit
def test_trial_data_writes_each_named_sites_images(tmp_path, capsys):
    assert flip_cli(["trial", "data", "--sites", "hospital-a,hospital-b", "--dir", str(tmp_path / "flip")]) == 0
    for site in ("hospital-a", "hospital-b"):
        assert len(list((tmp_path / "flip" / "cohorts" / site).rglob("*.png"))) > 500
    assert f"start it with FLIP_LOCAL_DIR={tmp_path / 'flip'}" in capsys.readouterr().out
    # its own folder: cleared and written again (the demo's marker rule)
    assert flip_cli(["trial", "data", "--sites", "hospital-c", "--dir", str(tmp_path / "flip")]) == 0
    assert sorted(p.name for p in (tmp_path / "flip" / "cohorts").iterdir()) == ["hospital-c"]


@pytest.mark.unit
def test_jobs_export_gives_each_submission_its_own_model_id(tmp_path, capsys):
    chosen = str(uuid.uuid4())
    assert (
        flip_cli(
            ["jobs", "export", "standard", "--model-id", chosen, "--num-rounds", "1", "--out", str(tmp_path / "a")]
        )
        == 0
    )
    job = tmp_path / "a" / "standard"
    assert _model_id(job) == chosen
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    assert [w["args"]["num_rounds"] for w in server["workflows"] if "num_rounds" in w.get("args", {})] == [1]
    capsys.readouterr()
    assert flip_cli(["jobs", "export", "standard", "--new-model-id", "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    new = _model_id(tmp_path / "b" / "standard")
    assert printed == f"model id: {new}" and new not in (chosen, DEFAULT_MODEL_ID)


@pytest.mark.unit
@pytest.mark.parametrize(
    "args, message",
    [
        (["standard", "--model-id", "not-a-uuid"], "model_id must be a UUID"),
        (["--new-model-id"], "name the job(s) to write with a model id"),
        (["standard", "--model-id", str(uuid.uuid4()), "--new-model-id"], "give --model-id UUID or --new-model-id"),
        (["evaluation", "--num-rounds", "2"], "job 'evaluation' takes no --num-rounds"),
        (["standard", "--num-rounds", "0"], "num_rounds must be an integer >= 1, got 0"),
    ],
)
def test_jobs_export_refuses_bad_options_naming_them(tmp_path, capsys, args, message):
    assert flip_cli(["jobs", "export", *args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def _status(local, model_id, run_id, status, at):
    with open(local / "status.jsonl", "a") as f:
        f.write(json.dumps({"model_id": model_id, "run_id": run_id, "status": status, "time": at}) + "\n")


@pytest.mark.unit
def test_status_wait_returns_once_the_run_has_ended(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path))
    model_id = str(uuid.uuid4())
    assert flip_cli(["status", model_id, "--wait", "0.1"]) == 1  # nothing recorded within the wait
    assert "no status recorded" in capsys.readouterr().out
    LocalPlatform(tmp_path).report_status(model_id, "run-1", "INITIATED")
    assert flip_cli(["status", model_id, "--wait", "0.1"]) == 1
    assert f"the latest run of model {model_id} is at INITIATED, not finished after 0.1 s" in capsys.readouterr().err
    LocalPlatform(tmp_path).report_status(model_id, "run-1", "RESULTS_UPLOADED")
    assert flip_cli(["status", model_id, "--wait", "30"]) == 0
    assert "RESULTS_UPLOADED" in capsys.readouterr().out
    LocalPlatform(tmp_path).report_status(model_id, "run-2", "ERROR", "site hospital-a: boom")
    assert flip_cli(["status", model_id, "--wait", "30"]) == 1
    assert f"the latest run of model {model_id} ended ERROR" in capsys.readouterr().err


@pytest.mark.s3
def test_s3_serve_detach_and_stop(tmp_path, capsys):
    root = tmp_path / "s3"
    assert flip_cli(["s3", "serve", "--dir", str(root), "--detach"]) == 0
    said = capsys.readouterr().out
    env_file = root / "s3.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    exported = dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
    assert set(exported) == {
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "FLIP_MODELS_BUCKET",
    }
    assert f"flip s3 stop --dir {root}" in said
    pid = serving_pid(root)
    assert pid and os.path.exists(f"/proc/{pid}")
    try:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=exported["AWS_ENDPOINT_URL_S3"],
            region_name="us-east-1",
            aws_access_key_id=exported["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exported["AWS_SECRET_ACCESS_KEY"].strip("'"),
        )
        assert "flip-models" in [b["Name"] for b in client.list_buckets()["Buckets"]]
        assert flip_cli(["s3", "serve", "--dir", str(root), "--detach"]) == 2  # one server per folder
        assert f"an S3 server already serves {root}" in capsys.readouterr().err
    finally:
        assert flip_cli(["s3", "stop", "--dir", str(root)]) == 0
    assert f"stopped the S3 server of {root} (pid {pid})" in capsys.readouterr().out
    assert serving_pid(root) is None and not env_file.exists()
    assert not [p for p in os.listdir("/proc") if p.isdigit() and str(root) in _cmdline(p)]  # weed gone too
    assert flip_cli(["s3", "stop", "--dir", str(root)]) == 0
    assert f"no S3 server serves {root}" in capsys.readouterr().out


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.unit
def test_detach_needs_a_folder(capsys):
    assert flip_cli(["s3", "serve", "--detach"]) == 2
    assert "--detach needs --dir" in capsys.readouterr().err
