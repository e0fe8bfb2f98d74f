"""FLIP apps end to end: ``flip job create`` + ``flip simulate`` in the NVFlare simulator, with a real S3 server.

The apps (tests/apps) are written as a FLIP researcher writes them, against FLIP's API: an Executor-contract
classifier on DICOM files, a MONAI FL ClientAlgo 3-D segmentation on NIfTI volumes, and an evaluation-only app.
Each runs unchanged with FLIP's dev variables (per site with ``--site-data``, or ``LOCAL_DEV``, ``DEV_DATAFRAME``,
``DEV_IMAGES_DIR``), lands a verified model or results in S3 and reports its metrics. Bad apps (no FLIP_TRAINER, a
constructor that raises, a dataframe without accession_id) end in ERROR naming the cause, and upload nothing.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import uuid
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from flip.cli import main as flip_cli
from flip.constants import RunFile
from flip.platform.dev import LocalPlatform
from flip.storage.layout import run_prefix
from tests.apps.data import DICOM_APP, EVALUATION_APP, SEGMENTATION_APP, write_dicom_cohorts, write_nifti_cohorts
from tests.conftest import environ
from tests.integration.conftest import load_app_module, run_objects

pytestmark = [pytest.mark.simulator, pytest.mark.s3]
SITES = ["site-1", "site-2"]
LIFECYCLE = ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]
#: what the tests set, restored after each run (flip simulate --site-data sets FLIP_SITE_DATA for the sites)
_RUN_VARIABLES = ("FLIP_SITE_DATA", "FLIP_ENV", "LOCAL_DEV", "DEV_DATAFRAME", "DEV_IMAGES_DIR")


@dataclass
class AppRun:
    """One app's job made by ``flip job create`` and run by ``flip simulate``."""

    create_rc: int
    create_output: str
    rc: int
    model_id: str
    job: Path
    local_dir: Path
    workspace: Path

    def statuses(self) -> list[dict]:
        return LocalPlatform(self.local_dir).read_statuses(self.model_id)

    def objects(self, weed) -> tuple[dict, dict[str, bytes]]:
        return run_objects(weed, run_prefix(self.model_id, self.statuses()[-1]["run_id"]))


def run_app(
    tmp: Path, weed, app: Path, *create_args: str, site_data: dict | None = None, env: dict | None = None
) -> AppRun:
    """``flip job create app --out tmp/job ...`` then ``flip simulate tmp/job --sites 2 [--site-data ...]``."""
    model_id = str(uuid.uuid4())
    job = tmp / "job"
    output = io.StringIO()
    with redirect_stdout(output):
        create_rc = flip_cli(
            [
                "job",
                "create",
                str(app),
                "--out",
                str(job),
                "--model-id",
                model_id,
                "--min-clients",
                "2",
                "--project-id",
                "test-project",
                "--query",
                "SELECT *",
                *create_args,
            ]
        )
    if create_rc != 0:
        return AppRun(create_rc, output.getvalue(), -1, model_id, job, tmp / "flip", tmp / "workspace")
    args = ["simulate", str(job), "--workspace", str(tmp / "workspace"), "--sites", str(len(SITES))]
    for site, (csv, images) in (site_data or {}).items():
        args += ["--site-data", f"{site}={csv}:{images}"]
    variables = {key: None for key in _RUN_VARIABLES} | {"FLIP_ENV": "dev"} | (env or {})
    with environ(**weed.env, FLIP_LOCAL_DIR=str(tmp / "flip"), **variables):
        rc = flip_cli(args)
    return AppRun(create_rc, output.getvalue(), rc, model_id, job, tmp / "flip", tmp / "workspace")


def strict_json(body: bytes):
    """Parse JSON that must be strict: a NaN or Infinity fails."""

    def refuse(token):
        raise AssertionError(f"not strict JSON: {token}")

    return json.loads(body, parse_constant=refuse)


def flip_metrics(metrics: dict) -> dict[str, dict[str, list[float]]]:
    """Every value a site sent with send_metrics_value, over all rounds: ``{site: {label: [values]}}``."""
    found: dict[str, dict[str, list[float]]] = {}
    for entry in metrics.get("flip_metrics", []):
        for site, labels in entry["sites"].items():
            for label, values in labels.items():
                found.setdefault(site, {}).setdefault(label, []).extend(values)
    return found


def no_objects(weed, model_id: str) -> list[str]:
    listed = weed._client().list_objects_v2(Bucket=weed.bucket, Prefix=f"{model_id}/")
    return [o["Key"] for o in listed.get("Contents", [])]


# -- an Executor-contract classifier on DICOM files ---------------------------------------------------------------
@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory, weed) -> AppRun:
    tmp = tmp_path_factory.mktemp("flip_dicom")
    return run_app(tmp, weed, DICOM_APP, site_data=write_dicom_cohorts(tmp / "hospitals", SITES))


def test_executor_app_trains_and_lands_a_verified_model(dicom_run, weed):
    assert dicom_run.create_rc == 0 and dicom_run.rc == 0, dicom_run.create_output
    assert "trainer.py: FLIP's Executor contract -> RUN_TRAINER" in dicom_run.create_output
    assert [s["status"] for s in dicom_run.statuses()] == LIFECYCLE
    _, objects = dicom_run.objects(weed)
    state = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), map_location="cpu", weights_only=True)
    model = load_app_module(DICOM_APP, "models").get_model()
    model.load_state_dict(state)  # strict: every entry, BatchNorm's buffers included
    assert state["features.1.num_batches_tracked"].dtype == torch.int64
    assert state["features.1.num_batches_tracked"].item() > 0  # the sites' integer counters travelled and averaged
    assert not torch.equal(state["features.1.running_var"], torch.ones(8))
    assert {RunFile.METRICS, RunFile.CROSS_VAL_RESULTS, RunFile.REPORT_INDEX} <= set(objects)


def test_executor_app_metrics_reach_metrics_json_repeated_labels_kept_nan_dropped(dicom_run, weed):
    _, objects = dicom_run.objects(weed)
    metrics = strict_json(objects[RunFile.METRICS])
    sent = flip_metrics(metrics)
    assert sorted(sent) == SITES
    for site in SITES:
        assert {"TRAIN_LOSS", "VAL_LOSS", "TRAIN-F1-SCORE", "TRAIN-PRECISION", "TRAIN-RECALL"} <= set(sent[site])
        assert len(sent[site]["TRAIN_LOSS"]) == 2  # 2 rounds x 1 epoch
        # one value per class and epoch under the same label; class "three" has no study: its recall is NaN, dropped
        assert 2 <= len(sent[site]["TRAIN-RECALL"]) < 4 * 2
        assert all(math.isfinite(v) for values in sent[site].values() for v in values)


def test_executor_app_validation_keeps_the_nested_shape(dicom_run, weed):
    _, objects = dicom_run.objects(weed)
    results = strict_json(objects[RunFile.CROSS_VAL_RESULTS])
    assert sorted(results) == SITES
    for site in SITES:
        scores = results[site][RunFile.SERVER_MODEL]
        assert isinstance(scores["loss"], list) and scores["loss"]
        assert set(scores["f1-score"]) <= {"zero", "one", "two", "three"}
        assert all(isinstance(v, list) for v in scores["precision"].values())


# -- a MONAI FL ClientAlgo 3-D segmentation on NIfTI volumes --------------------------------------------------------
@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory, weed) -> AppRun:
    tmp = tmp_path_factory.mktemp("flip_segmentation")
    return run_app(tmp, weed, SEGMENTATION_APP, site_data=write_nifti_cohorts(tmp / "hospitals", SITES))


def test_client_algo_app_trains_and_lands_a_verified_unet(segmentation_run, weed):
    assert segmentation_run.create_rc == 0 and segmentation_run.rc == 0, segmentation_run.create_output
    assert "trainer.py: MONAI FL's ClientAlgo -> RUN_MONAI_FL_TRAINER" in segmentation_run.create_output
    assert [s["status"] for s in segmentation_run.statuses()] == LIFECYCLE
    _, objects = segmentation_run.objects(weed)
    state = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), map_location="cpu", weights_only=True)
    unet = load_app_module(SEGMENTATION_APP, "models").get_model()
    initial = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.load_state_dict(state)
    assert any(not torch.equal(initial[k], state[k]) for k in initial)  # trained
    sent = flip_metrics(strict_json(objects[RunFile.METRICS]))
    assert sorted(sent) == SITES and all(len(sent[s]["train_loss"]) == 2 for s in SITES)  # 1 round x 2 epochs
    results = strict_json(objects[RunFile.CROSS_VAL_RESULTS])
    assert all(0.0 <= results[s][RunFile.SERVER_MODEL]["val_acc"] <= 1.0 for s in SITES)


# -- an evaluation-only app, with FLIP's dev variables (one CSV and image root for every site) ----------------------
@pytest.fixture(scope="module")
def evaluation_run(tmp_path_factory, weed) -> AppRun:
    tmp = tmp_path_factory.mktemp("flip_evaluation")
    app = tmp / "app"
    shutil.copytree(EVALUATION_APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    torch.save(load_app_module(EVALUATION_APP, "models").get_model().state_dict(), app / "model.pt")
    ((csv, images),) = write_nifti_cohorts(tmp / "hospital", ["shared"], per_site=3).values()
    env = {"FLIP_ENV": None, "LOCAL_DEV": "true", "DEV_DATAFRAME": str(csv), "DEV_IMAGES_DIR": str(images)}
    return run_app(tmp, weed, app, "--sites", "2", env=env)


def test_evaluation_app_lands_its_results_and_the_checkpoint_stays_on_the_server(evaluation_run, weed):
    assert evaluation_run.create_rc == 0 and evaluation_run.rc == 0, evaluation_run.create_output
    assert evaluation_run.statuses()[-1]["status"] == "RESULTS_UPLOADED"
    _, objects = evaluation_run.objects(weed)
    assert RunFile.GLOBAL_MODEL not in objects and RunFile.REPORT_INDEX in objects
    results = strict_json(objects[RunFile.EVALUATION_RESULTS])
    assert sorted(results) == SITES
    for site in SITES:
        organ = results[site]["unet"]["organ"]
        assert len(organ["raw_dice"]) == 3 and 0.0 <= organ["mean_dice"] <= 1.0
    for site in SITES:  # the site apps were deployed without the checkpoint
        assert not list((evaluation_run.workspace / site).rglob("model.pt"))


# -- bad apps: ERROR naming the cause, nothing uploaded ---------------------------------------------------------------
def _no_trainer_class(app: Path, data: dict) -> None:
    (app / "trainer.py").write_text((app / "trainer.py").read_text().replace("class FLIP_TRAINER(", "class TRAINER("))


def _constructor_raises(app: Path, data: dict) -> None:
    source = (app / "trainer.py").read_text()
    (app / "trainer.py").write_text(
        source.replace(
            "        super().__init__()\n", "        super().__init__()\n        raise RuntimeError('no GPU')\n", 1
        )
    )


def _no_accession_column(app: Path, data: dict) -> None:
    for csv, _ in data.values():
        csv.write_text(csv.read_text().replace("accession_id,label", "study,label", 1))


@pytest.mark.parametrize(
    "edit, cause",
    [
        (_no_trainer_class, "FLIP_TRAINER"),
        (_constructor_raises, "RuntimeError"),
        (_no_accession_column, "accession_id"),
    ],
    ids=["no FLIP_TRAINER", "constructor raises", "dataframe without accession_id"],
)
def test_a_bad_app_ends_in_error_naming_the_cause_and_uploads_nothing(tmp_path, weed, edit, cause):
    app = tmp_path / "app"
    shutil.copytree(DICOM_APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    data = write_dicom_cohorts(tmp_path / "hospitals", SITES, per_site=8)
    edit(app, data)
    run = run_app(tmp_path, weed, app, "--rounds", "1", site_data=data)
    assert run.create_rc == 0, run.create_output
    final = run.statuses()[-1]
    assert final["status"] == "ERROR", run.statuses()
    assert cause in final["reason"] and "site-" in final["reason"], final["reason"]
    assert no_objects(weed, run.model_id) == []
