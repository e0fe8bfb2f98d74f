"""The model registry on a real S3 server: only verified runs are served, artifacts load safely."""

from __future__ import annotations

import json
import pickle
import uuid

import pytest
import torch

from flip.cli import main as flip_cli
from flip.constants import RunFile
from flip.errors import RegistryError
from flip.jobs import DEMO_APP_DIR
from flip.storage.layout import run_prefix
from flip.storage.registry import ModelRegistry, load_model_file
from flip.storage.upload import upload_run
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
        (tmp_path / f"{run_id}.json").write_text(json.dumps(metrics))
        files[RunFile.METRICS] = tmp_path / f"{run_id}.json"
    upload_run(
        registry.client,
        registry.bucket,
        run_prefix(model_id, run_id),
        files,
        {"model_id": model_id, "run_id": run_id, "rounds": 2, "sites": ["site-1", "site-2"]},
    )


def test_latest_verified_run_is_served_and_unverified_ones_never(registry, tmp_path):
    model_id = str(uuid.uuid4())
    first, second = Net().state_dict(), Net().state_dict()
    _upload_run(
        registry,
        model_id,
        "job-a",
        first,
        tmp_path,
        {"rounds": [{"round": 2, "global": {"accuracy": 0.9, "num_samples": 10}}]},
    )
    _upload_run(registry, model_id, "job-b", second, tmp_path)
    # a third run whose upload never finished: objects but no manifest
    registry.client.put_object(Bucket=registry.bucket, Key=f"{model_id}/job-c/{RunFile.GLOBAL_MODEL}", Body=b"partial")
    assert {(r.run_id, r.verified) for r in registry.runs(model_id)} == {
        ("job-a", True),
        ("job-b", True),
        ("job-c", False),
    }
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
    upload_run(
        registry.client,
        registry.bucket,
        run_prefix(model_id, "job-r"),
        {RunFile.GLOBAL_MODEL: model, "report/index.html": page, "report/curves.png": curves},
        {},
    )
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


# -- DLR's registry operations: upload with metadata and a preprocessing model, show, metrics, rounds, remove -------

DEMO_MODELS = str(DEMO_APP_DIR / "models.py")


class Scale(torch.nn.Module):
    """A preprocessing model: raw 0-255 pixels to the demo model's [0, 1] input."""

    def forward(self, x):
        return x / 255.0


def _demo_files(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_registry_demo_models", DEMO_MODELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, pre = tmp_path / "demo.pt", tmp_path / "pre.pt"
    torch.save(module.get_model().state_dict(), model)
    torch.jit.script(Scale()).save(str(pre))
    return model, pre


def test_upload_with_name_description_and_preprocessing_then_show_and_preprocessing(weed, tmp_path, capsys):
    """DLR's "create a model to start from": name, description, owner, parameter count and shapes in the manifest;
    the preprocessing model validated by running it (before: an unchecked preprocessing.py copied to S3)."""
    model, pre = _demo_files(tmp_path)
    with environ(**weed.env):
        assert (
            flip_cli(
                [
                    "models",
                    "upload",
                    str(model),
                    "--name",
                    "digits MLP",
                    "--description",
                    "8x8 digits",
                    "--preprocessing",
                    str(pre),
                    "--input-shape",
                    "8,8",
                    "--models",
                    DEMO_MODELS,
                    "--owner",
                    "alice",
                    "--json",
                ]
            )
            == 0
        )
        manifest = json.loads(capsys.readouterr().out)
        model_id = manifest["model_id"]
        assert (manifest["name"], manifest["description"], manifest["owner"]) == ("digits MLP", "8x8 digits", "alice")
        assert manifest["parameter_count"] == 64 * 64 + 64 + 64 * 10 + 10
        assert manifest["input_shape"] == [8, 8] and manifest["output_shape"] == [10]
        assert manifest["preprocessing"] == {
            "format": "torchscript",
            "parameter_count": 0,
            "input_shape": [8, 8],
            "output_shape": [8, 8],
        }
        assert flip_cli(["models", "show", model_id]) == 0
        shown = capsys.readouterr().out
        for line in (
            "name:          digits MLP",
            "owner:         alice",
            "parameters:    4,810",
            "input shape:   8×8",
            "output shape:  10",
            "preprocessing: torchscript, input 8×8 -> 8×8",
        ):
            assert line in shown, shown
        assert flip_cli(["models", "list"]) == 0
        listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(model_id)]
        assert listed and "digits MLP" in listed[0] and "alice" in listed[0] and "1 of 1" in listed[0]
        out = tmp_path / "got-pre.pt"
        assert flip_cli(["models", "preprocessing", model_id, "-o", str(out)]) == 0
        assert torch.equal(torch.jit.load(str(out))(torch.tensor([255.0])), torch.tensor([1.0]))
        # owner recorded: another owner cannot remove it
        assert flip_cli(["models", "remove", model_id, "--yes", "--owner", "bob"]) == 2
        assert f"model {model_id} is owned by alice, not bob" in capsys.readouterr().err
        assert flip_cli(["models", "remove", model_id, "--yes", "--owner", "alice"]) == 0


def test_a_model_without_preprocessing_says_so_without_a_trace(weed, tmp_path, capsys):
    model, _ = _demo_files(tmp_path)
    with environ(**weed.env):
        assert flip_cli(["models", "upload", str(model), "--name", "plain", "--json"]) == 0
        model_id = json.loads(capsys.readouterr().out)["model_id"]
        assert flip_cli(["models", "preprocessing", model_id]) == 1
        err = capsys.readouterr().err
        assert err == f"model {model_id} has no preprocessing model (none was uploaded with it)\n"


def _bad_state(tmp_path):
    path = tmp_path / "bad-shape.pt"
    torch.save({"layers.1.weight": torch.zeros(3, 3)}, path)
    return path


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            lambda t, m: ["models", "show", "6a3b9c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f"],
            "model 6a3b9c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f has no runs in s3://",
        ),
        (lambda t, m: ["models", "show", "not-a-uuid"], "model_id must be a UUID"),
        (lambda t, m: ["models", "metrics", "6a3b9c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f"], "has no runs"),
        (lambda t, m: ["models", "rounds", "6a3b9c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f"], "has no runs"),
        (lambda t, m: ["models", "preprocessing", "6a3b9c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f"], "has no runs"),
        (lambda t, m: ["models", "predict", "6a3b9c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f", str(m)], "has no runs"),
        (lambda t, m: ["models", "remove", "6a3b9c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f", "--yes"], "has no objects"),
        (
            lambda t, m: ["models", "upload", str(t / "garbage.pt"), "--name", "x"],
            "garbage.pt is neither a weights-only torch.save file nor TorchScript",
        ),
        (lambda t, m: ["models", "upload", str(t / "absent.pt"), "--name", "x"], "absent.pt' not found"),
        (
            lambda t, m: ["models", "upload", str(_bad_state(t)), "--name", "x", "--models", DEMO_MODELS],
            "bad-shape.pt: key 'layers.1.weight' has shape (3, 3), models.get_model() has (64, 64)",
        ),
        (
            lambda t, m: ["models", "upload", str(m), "--name", "x", "--models", DEMO_MODELS, "--input-shape", "3,3"],
            "demo.pt does not run on an input of shape (3, 3) (batch of 1)",
        ),
        (
            lambda t, m: ["models", "upload", str(m), "--name", "x", "--input-shape", "8,0"],
            "input shape must be 1 to 8 whole numbers in [1, 100000]",
        ),
        (
            lambda t, m: ["models", "upload", str(m), "--name", "x", "--preprocessing", str(m)],
            "a preprocessing model needs the input shape it takes",
        ),
        (lambda t, m: ["models", "upload", str(m), "--name", "x\ny"], "name must not contain control characters"),
        (
            lambda t, m: ["models", "download", "6a3b9c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f", "--best", "--round", "2"],
            "give one of --best, --round, --local, --report, --artifact, got --best and --round",
        ),
        (
            lambda t, m: ["models", "download", "6a3b9c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f", "--round", "0"],
            "--round must be a round number >= 1, got 0",
        ),
        (
            lambda t, m: ["models", "download", "6a3b9c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f", "--local", "../x"],
            "site name '../x' is invalid",
        ),
    ],
)
def test_every_registry_command_names_a_bad_input_and_exits_2(weed, tmp_path, capsys, argv, message):
    model, _ = _demo_files(tmp_path)
    (tmp_path / "garbage.pt").write_bytes(b"not a model at all")
    with environ(**weed.env):
        assert flip_cli(argv(tmp_path, model)) == 2
    err = capsys.readouterr().err
    assert err.startswith("flip: error: ") and message in err and "Traceback" not in err, err


def test_bad_inputs_of_an_existing_model_are_named(weed, tmp_path, capsys):
    model, _ = _demo_files(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with environ(**weed.env):
        assert flip_cli(["models", "upload", str(model), "--name", "m", "--json"]) == 0
        model_id = json.loads(capsys.readouterr().out)["model_id"]
        cases = [
            (["models", "rounds", model_id, "--job", "nope"], f"model {model_id} has no run 'nope'"),
            (
                ["models", "download", model_id, "--round", "3"],
                f"model {model_id} has no verified run with rounds/global_model_round_3.pt",
            ),
            (["models", "download", model_id, "--best"], "has no verified run with best_global_model.pt"),
            (["models", "metrics", model_id], "has no verified run with metrics.json"),
            (
                ["models", "predict", model_id, str(tmp_path / "notes.txt"), "--models", DEMO_MODELS],
                "input notes.txt: expected an image",
            ),
            (
                ["models", "predict", model_id, str(tmp_path / "missing.png"), "--models", DEMO_MODELS],
                "input '" + str(tmp_path / "missing.png") + "' not found",
            ),
            (["models", "predict", model_id, str(model)], "global_model.pt of run"),
        ]
        for argv, message in cases:
            assert flip_cli(argv) == 2, argv
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err, (argv, err)


def test_remove_is_refused_while_a_run_of_the_model_has_not_ended(weed, tmp_path, capsys):
    from flip.constants import RunStatus
    from flip.platform.dev import LocalPlatform

    model, _ = _demo_files(tmp_path)
    local = tmp_path / "flip"
    with environ(**weed.env, FLIP_LOCAL_DIR=str(local), FLIP_ENV="dev"):
        assert flip_cli(["models", "upload", str(model), "--name", "busy", "--json"]) == 0
        model_id = json.loads(capsys.readouterr().out)["model_id"]
        LocalPlatform(local).report_status(model_id, "run-7", RunStatus.TRAINING_STARTED)
        assert flip_cli(["models", "remove", model_id, "--yes"]) == 2
        assert f"model {model_id} is in use: run(s) run-7 have not ended" in capsys.readouterr().err
        assert flip_cli(["models", "list"]) == 0
        assert "TRAINING_STARTED" in [line for line in capsys.readouterr().out.splitlines() if model_id in line][0]
        LocalPlatform(local).report_status(model_id, "run-7", RunStatus.RESULTS_UPLOADED)
        assert flip_cli(["models", "remove", model_id, "--yes"]) == 0
