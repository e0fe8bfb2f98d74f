"""One simulator run of the registry's whole round trip: a model trained elsewhere is uploaded with a preprocessing
model, three hospitals fine-tune it (standard job, ensemble, per-round tests, every round's global model kept, local
models kept, the best model selected), and the registry serves what the run kept: rounds, local models, the best
model, metrics per round and reporter, and predictions with the ensemble's uncertainty on image files."""

from __future__ import annotations

import io
import json
import shutil
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from flip.cli import main as flip_cli
from flip.constants import RunFile
from flip.demo.data import write_cohorts
from flip.jobs import DEMO_APP_DIR, write_job
from flip.storage.layout import round_model_key
from tests.conftest import environ
from tests.integration.conftest import direct_evaluation, load_app_module, run_objects, simulate

pytestmark = [pytest.mark.simulator, pytest.mark.s3]

SITES = ["site-1", "site-2", "site-3"]
DEMO_MODELS = str(DEMO_APP_DIR / "models.py")


class Scale(torch.nn.Module):
    """The preprocessing model: raw 0-255 pixels to the demo model's [0, 1] input."""

    def forward(self, x):
        return x / 255.0


def _pretrain(cohorts) -> dict:
    """The demo model trained on every site's images together (a model "trained elsewhere")."""
    data = load_app_module(DEMO_APP_DIR, "digits_data")
    parts = [data.load_folder(cohorts / site) for site in SITES]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    model = load_app_module(DEMO_APP_DIR, "models").get_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(5)
    for _ in range(15):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 32):
            batch = order[start : start + 32]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _cli(argv, capsys) -> str:
    assert flip_cli(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def finetune(tmp_path_factory, weed):
    tmp = tmp_path_factory.mktemp("finetune")
    write_cohorts(tmp / "flip", SITES)
    cohorts = tmp / "flip" / "cohorts"
    state = _pretrain(cohorts)
    model_file, pre = tmp / "pretrained.pt", tmp / "pre.pt"
    torch.save(state, model_file)
    torch.jit.script(Scale()).save(str(pre))
    model_id = str(uuid.uuid4())
    with environ(**weed.env):
        assert (
            flip_cli(
                [
                    "models",
                    "upload",
                    str(model_file),
                    "--model-id",
                    model_id,
                    "--name",
                    "digits pretrained",
                    "--description",
                    "trained on pooled digits",
                    "--owner",
                    "alice",
                    "--preprocessing",
                    str(pre),
                    "--input-shape",
                    "8,8",
                    "--models",
                    DEMO_MODELS,
                    "--job",
                    "upload-1",
                ]
            )
            == 0
        )
    job = write_job(
        "standard",
        tmp / "jobs",
        model_id=model_id,
        num_rounds=2,
        min_clients=2,
        initial_model=f"{model_id}/upload-1",
        keep_round_models=True,
        keep_best="accuracy",
        delete_local_models_after_aggregation=False,
        uncertainty="ensemble",
    )
    run = simulate(tmp, job, weed, SITES, threads=2, cohorts_ready=True)
    # what the cohorts were, before the run's cleanup: 10 digits of site-1 (one per label) and noise images
    inputs = tmp / "inputs"
    inputs.mkdir()
    digits = []
    for label in range(10):
        source = sorted((cohorts / "site-1" / str(label)).glob("*.png"))[0]
        digits.append((shutil.copy(source, inputs / f"digit-{label}.png"), label))
    rng = np.random.default_rng(7)
    noise = []
    for i in range(10):
        path = inputs / f"noise-{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(path)
        noise.append(path)
    return {
        "model_id": model_id,
        "state": state,
        "run": run,
        "cohorts": cohorts,
        "digits": digits,
        "noise": noise,
        "tmp": tmp,
    }


@pytest.fixture(scope="module")
def uploaded(finetune, weed):
    statuses = finetune["run"].statuses(finetune["model_id"])
    assert finetune["run"].rc == 0 and statuses[-1]["status"] == "RESULTS_UPLOADED", statuses
    prefix = f"{finetune['model_id']}/{statuses[-1]['run_id']}/"
    return run_objects(weed, prefix)


def test_fine_tuning_starts_where_the_uploaded_model_is(finetune, uploaded):
    """The first round's training loss is the uploaded model's (~0.1), not a fresh model's (~2.3): before, training
    always started from models.get_model() (and write_job had no initial_model)."""
    manifest, objects = uploaded
    metrics = json.loads(objects[RunFile.METRICS])
    first = metrics["rounds"][0]["global"]["loss"]
    fresh = load_app_module(DEMO_APP_DIR, "models").get_model().state_dict()
    cohorts = finetune["cohorts"]
    up = np.mean([direct_evaluation(finetune["state"], cohorts / s)["loss"] for s in SITES])
    start = np.mean([direct_evaluation(fresh, cohorts / s)["loss"] for s in SITES])
    assert start > 2.0 and up < 0.3
    assert abs(first - up) < 0.25 and first < start / 4, (first, up, start)
    assert manifest["initial_model"]["model_id"] == finetune["model_id"]
    assert manifest["initial_model"]["run_id"] == "upload-1"
    source = f"registry model {finetune['model_id']} run upload-1"
    assert source in objects[RunFile.REPORT_INDEX].decode()
    assert f"the run starts from {source}" in finetune["run"].log_text("server")


def test_per_round_tests_reach_every_site_and_the_best_model_is_kept(finetune, uploaded):
    """3 sites, min_clients 2, 2 threads: every site tests every round's global model (before: the round went on
    after min_clients answers and the third site's test was lost)."""
    manifest, objects = uploaded
    rounds = json.loads(objects[RunFile.METRICS])["rounds"]
    assert [sorted(r["validation"]) for r in rounds] == [SITES, SITES]
    best = torch.load(io.BytesIO(objects[RunFile.BEST_MODEL]), weights_only=True)
    per_round = [torch.load(io.BytesIO(objects[round_model_key(n)]), weights_only=True) for n in (1, 2)]
    assert any(all(torch.equal(best[k], r[k]) for k in best) for r in per_round)
    assert "best global model so far (accuracy" in finetune["run"].log_text("server")


def test_rounds_and_local_models_are_listed_and_downloadable(finetune, uploaded, weed, tmp_path, capsys):
    manifest, objects = uploaded
    model_id = finetune["model_id"]
    with environ(**weed.env):
        kept = json.loads(_cli(["models", "rounds", model_id, "--json"], capsys))
        assert [r["round"] for r in kept["rounds"]] == [1, 2]
        assert kept["local_models"]["round"] == 2 and [s["site"] for s in kept["local_models"]["sites"]] == SITES
        text = _cli(["models", "rounds", model_id], capsys)
        assert "round   1  rounds/global_model_round_1.pt" in text and "local models of round 2" in text
        second = tmp_path / "r2.pt"
        _cli(["models", "download", model_id, "--round", "2", "-o", str(second)], capsys)
        final = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), weights_only=True)
        got = torch.load(second, weights_only=True)
        assert all(torch.equal(got[k], final[k]) for k in final)
        first = torch.load(
            tmp_path / _cli(["models", "download", model_id, "--round", "1", "-o", str(tmp_path)], capsys).strip(),
            weights_only=True,
        )
        assert not all(torch.equal(first[k], final[k]) for k in final)
        local = torch.load(
            _cli(["models", "download", model_id, "--local", "site-2", "-o", str(tmp_path / "l.pt")], capsys).strip(),
            weights_only=True,
        )
        members = torch.load(io.BytesIO(objects[RunFile.ENSEMBLE]), weights_only=True)
        assert all(torch.equal(local[k], members["site-2"][k]) for k in members["site-2"])
        best = _cli(["models", "download", model_id, "--best", "-o", str(tmp_path / "b.pt")], capsys).strip()
        assert torch.load(best, weights_only=True).keys() == final.keys()


def test_show_and_metrics_describe_the_fine_tuned_model(finetune, uploaded, weed, capsys):
    model_id = finetune["model_id"]
    with environ(**weed.env):
        shown = _cli(["models", "show", model_id], capsys)
        for line in (
            "name:          digits pretrained",
            "owner:         alice",
            "parameters:    4,810",
            "rounds:        2",
            "sites:         site-1, site-2, site-3",
            f"started from:  registry model {model_id} run upload-1",
            "input shape:   8×8",
        ):
            assert line in shown, shown
        table = json.loads(_cli(["models", "metrics", model_id, "--json"], capsys))
        tests = [(r["round"], r["reporter"]) for r in table["rows"] if r["kind"] == "test"]
        assert tests == [(1, s) for s in SITES] + [(2, s) for s in SITES]
        assert {r["kind"] for r in table["rows"]} == {"train", "mean", "test"}
        text = _cli(["models", "metrics", model_id], capsys)
        assert "    1  global    mean" in text and "    2  site-3    test" in text


def test_predict_applies_the_preprocessing_and_the_ensemble_is_less_sure_on_noise(finetune, uploaded, weed, capsys):
    """Predict reads raw PNG pixels (0-255); the model's preprocessing model scales them. The ensemble's predictive
    entropy is higher on noise images than on digits."""
    _, objects = uploaded
    files = [str(p) for p, _ in finetune["digits"]] + [str(p) for p in finetune["noise"]]
    with environ(**weed.env):
        result = json.loads(
            _cli(["models", "predict", finetune["model_id"], *files, "--models", DEMO_MODELS, "--json"], capsys)
        )
        table = _cli(["models", "predict", finetune["model_id"], files[0], "--models", DEMO_MODELS], capsys)
    assert result["uncertainty"] == "ensemble" and result["preprocessing"] is True
    rows = {r["input"]: r for r in result["predictions"]}
    digits = [rows[p.name] for p, _ in finetune["digits"]]
    noise = [rows[p.name] for p in finetune["noise"]]
    assert sum(r["prediction"] == label for r, (_, label) in zip(digits, finetune["digits"])) >= 8
    assert np.mean([r["entropy"] for r in noise]) > np.mean([r["entropy"] for r in digits]) + 0.2
    assert all("std" in r for r in digits)
    # by hand: the ensemble's members on the preprocessed image; without the preprocessing the answer differs
    members = torch.load(io.BytesIO(objects[RunFile.ENSEMBLE]), weights_only=True)
    raw = torch.from_numpy(np.asarray(Image.open(finetune["noise"][0]), dtype=np.float32))[None]
    model = load_app_module(DEMO_APP_DIR, "models").get_model()

    def mean_probs(x):
        probs = []
        for state in members.values():
            model.load_state_dict(state)
            model.eval()
            with torch.no_grad():
                probs.append(torch.softmax(model(x), -1))
        return torch.stack(probs).mean(0)[0]

    got = torch.tensor(rows["noise-0.png"]["probabilities"])
    assert (got - mean_probs(raw / 255.0)).abs().max() < 1e-6
    assert (got - mean_probs(raw)).abs().max() > 1e-4  # the raw pixels give another answer: the check can fail
    assert "uncertainty ENSEMBLE, preprocessing applied" in table and "digit-0.png" in table
