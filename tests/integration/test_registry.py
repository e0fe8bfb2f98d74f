"""The model registry on a real S3 server: only verified runs are served, artifacts load safely."""

from __future__ import annotations

import pickle
import uuid

import pytest
import torch

from flip.cli import main as flip_cli
from flip.constants import RunFile
from flip.errors import RegistryError
from flip.storage.layout import run_prefix
from flip.storage.upload import upload_run
from flip.storage.registry import ModelRegistry, load_model_file
from tests.conftest import environ

pytestmark = pytest.mark.s3


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)


@pytest.fixture
def registry(weed):
    return ModelRegistry(weed._client(), weed.bucket)


def _upload_run(registry, model_id, run_id, state, tmp_path, metrics=None):
    model = tmp_path / f"{run_id}.pt"
    torch.save(state, model)
    files = {RunFile.GLOBAL_MODEL: model}
    if metrics is not None:
        (tmp_path / f"{run_id}.json").write_text(__import__("json").dumps(metrics))
        files[RunFile.METRICS] = tmp_path / f"{run_id}.json"
    upload_run(registry.client, registry.bucket, run_prefix(model_id, run_id), files,
                  {"model_id": model_id, "run_id": run_id, "rounds": 2, "sites": ["site-1", "site-2"]})


def test_latest_verified_run_is_served_and_unverified_ones_never(registry, tmp_path):
    model_id = str(uuid.uuid4())
    first, second = Net().state_dict(), Net().state_dict()
    _upload_run(registry, model_id, "job-a", first, tmp_path,
                {"rounds": [{"round": 2, "global": {"accuracy": 0.9, "num_samples": 10}}]})
    _upload_run(registry, model_id, "job-b", second, tmp_path)
    # a third run whose upload never finished: objects but no manifest
    registry.client.put_object(Bucket=registry.bucket, Key=f"{model_id}/job-c/{RunFile.GLOBAL_MODEL}", Body=b"partial")
    assert {(r.run_id, r.verified) for r in registry.runs(model_id)} == {("job-a", True), ("job-b", True), ("job-c", False)}
    assert registry.run(model_id).run_id == "job-b"
    loaded = registry.load(model_id)
    assert torch.equal(loaded["fc.weight"], second["fc.weight"])
    assert torch.equal(registry.load(model_id, "job-a")["fc.weight"], first["fc.weight"])
    with pytest.raises(RegistryError, match="run job-c of model .* is not served: .* has no manifest.json"):
        registry.download(model_id, "job-c", tmp_path / "x.pt")
    shown = registry.show(model_id)
    by_run = {r["run_id"]: r for r in shown["runs"]}
    assert by_run["job-a"]["final_metrics"] == {"accuracy": 0.9, "num_samples": 10}
    assert by_run["job-a"]["rounds"] == 2 and by_run["job-a"]["sites"] == ["site-1", "site-2"]
    assert by_run["job-c"]["verified"] is False and "problem" in by_run["job-c"]
    assert model_id in registry.model_ids()


def test_a_damaged_object_makes_the_run_unservable(registry, tmp_path):
    model_id = str(uuid.uuid4())
    _upload_run(registry, model_id, "job-a", Net().state_dict(), tmp_path)
    registry.client.put_object(Bucket=registry.bucket, Key=f"{model_id}/job-a/{RunFile.GLOBAL_MODEL}", Body=b"evil")
    with pytest.raises(RegistryError, match="has no verified run"):
        registry.load(model_id)


def test_a_run_whose_manifest_is_not_json_is_listed_unverified_and_the_others_still_served(registry, tmp_path):
    model_id = str(uuid.uuid4())
    state = Net().state_dict()
    _upload_run(registry, model_id, "job-a", state, tmp_path)
    registry.client.put_object(Bucket=registry.bucket, Key=f"{model_id}/job-b/{RunFile.GLOBAL_MODEL}", Body=b"x")
    registry.client.put_object(Bucket=registry.bucket, Key=f"{model_id}/job-b/{RunFile.MANIFEST}", Body=b"{not json")
    by_run = {r.run_id: r for r in registry.runs(model_id)}
    assert by_run["job-a"].verified and not by_run["job-b"].verified
    assert "manifest.json is not valid JSON" in by_run["job-b"].problem
    assert torch.equal(registry.load(model_id)["fc.weight"], state["fc.weight"])


def test_torchscript_artifacts_are_accepted(registry, tmp_path):
    model_id = str(uuid.uuid4())
    scripted = torch.jit.script(Net())
    path = tmp_path / "scripted.pt"
    scripted.save(str(path))
    registry.upload(model_id, path, run_id="scripted")
    loaded = registry.load(model_id)
    x = torch.ones(1, 3)
    assert torch.equal(loaded(x), scripted(x))


def test_a_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump(Net(), f, protocol=2)  # a whole module: loading it would run arbitrary code
    with pytest.raises(RegistryError, match="neither a weights-only torch.save file nor TorchScript"):
        load_model_file(path)


def test_cli_list_show_download_remove(weed, tmp_path, capsys):
    model_id = str(uuid.uuid4())
    registry = ModelRegistry(weed._client(), weed.bucket)
    state = Net().state_dict()
    _upload_run(registry, model_id, "job-1", state, tmp_path)
    with environ(**weed.env):
        assert flip_cli(["models", "list"]) == 0
        assert model_id in capsys.readouterr().out
        assert flip_cli(["models", "show", model_id, "--json"]) == 0
        assert '"run_id": "job-1"' in capsys.readouterr().out
        target = tmp_path / "out" / "model.pt"
        assert flip_cli(["models", "download", model_id, "-o", str(target)]) == 0
        assert torch.equal(torch.load(target, weights_only=True)["fc.bias"], state["fc.bias"])
        assert flip_cli(["models", "download", model_id, "--job", "nope"]) == 2
        assert "has no run 'nope'" in capsys.readouterr().err
        assert flip_cli(["models", "remove", model_id]) == 2  # needs --yes
        assert flip_cli(["models", "remove", model_id, "--yes"]) == 0
        assert flip_cli(["models", "show", model_id]) == 2
    assert registry.client.list_objects_v2(Bucket=weed.bucket, Prefix=model_id).get("KeyCount", 0) == 0


def test_cli_downloads_other_artifacts_and_the_report(weed, tmp_path, capsys):
    model_id = str(uuid.uuid4())
    registry = ModelRegistry(weed._client(), weed.bucket)
    model, page, curves = tmp_path / "m.pt", tmp_path / "index.html", tmp_path / "curves.png"
    torch.save(Net().state_dict(), model)
    page.write_text('<!doctype html><img src="curves.png">')
    curves.write_bytes(b"\x89PNG fake but hashed")
    upload_run(registry.client, registry.bucket, run_prefix(model_id, "job-r"),
                  {RunFile.GLOBAL_MODEL: model, "report/index.html": page, "report/curves.png": curves}, {})
    with environ(**weed.env):
        assert flip_cli(["models", "download", model_id, "--report", str(tmp_path / "got")]) == 0
        assert capsys.readouterr().out.strip() == str(tmp_path / "got" / "index.html")
        assert (tmp_path / "got" / "index.html").read_text() == page.read_text()
        assert (tmp_path / "got" / "curves.png").read_bytes() == curves.read_bytes()
        out = tmp_path / "page.html"
        assert flip_cli(["models", "download", model_id, "--artifact", "report/index.html", "-o", str(out)]) == 0
        assert out.read_text() == page.read_text()
        capsys.readouterr()
        assert flip_cli(["models", "download", model_id, "--artifact", "metrics.json"]) == 2
        assert f"model {model_id} has no verified run with metrics.json" in capsys.readouterr().err


def test_bad_model_id_is_named(registry):
    with pytest.raises(ValueError, match="model_id must be a UUID"):
        registry.runs("../../etc")


def test_server_side_encryption_is_applied_when_configured(registry, tmp_path):
    model_id = str(uuid.uuid4())
    model = tmp_path / "m.pt"
    torch.save(Net().state_dict(), model)
    prefix = run_prefix(model_id, "sse")
    upload_run(registry.client, registry.bucket, prefix, {RunFile.GLOBAL_MODEL: model}, {}, sse="AES256")
    head = registry.client.head_object(Bucket=registry.bucket, Key=prefix + RunFile.GLOBAL_MODEL)
    assert head["ServerSideEncryption"] == "AES256"
    assert registry.run(model_id).verified
