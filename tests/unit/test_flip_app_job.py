"""``flip job create``: a job folder from a FLIP app folder (flip/jobs/flip_app.py), on real app folders.

The contract of each entry file is read with ``ast`` (nothing of the app runs); the job folder is what NVFlare's
job API exports, then completed (the app's other files, config.json's rounds, an evaluation's two apps).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from flip.cli import main as flip_cli
from flip.constants import JOB_TYPE_CHOICES
from flip.errors import AppError
from flip.jobs import DEMO_APP_DIR, MULTISTAGE_APP_DIR
from flip.jobs.flip_app import (
    JOB_TYPES,
    REQUIRED_FILES,
    Contract,
    create_job,
    detect_contract,
    inspect_app,
    job_type_name,
    plan_job,
)
from tests.apps.data import DICOM_APP, EVALUATION_APP, SEGMENTATION_APP

pytestmark = pytest.mark.unit

MODEL_ID = "0b9f6d1e-2c3a-4b5c-8d7e-9f0a1b2c3d4e"


def _copy(app: Path, tmp_path: Path, name: str = "app") -> Path:
    target = tmp_path / name
    shutil.copytree(app, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def _configs(job: Path, app: str = "app") -> tuple[dict, dict]:
    """The app's (server config, client config), {} for one it does not have."""
    config = job / app / "config"
    return tuple(
        json.loads((config / f"config_fed_{side}.json").read_text())
        if (config / f"config_fed_{side}.json").exists()
        else {}
        for side in ("server", "client")
    )


def _executors(client: dict) -> dict[str, dict]:
    return {task: entry["executor"] for entry in client["executors"] for task in entry["tasks"]}


def _component(server: dict, component_id: str) -> dict:
    return next(c for c in server["components"] + server["workflows"] if c["id"] == component_id)


# -- job types ----------------------------------------------------------------------------------------------------
def test_job_types_are_flips_and_multi_stage_is_flips_diffusion_model():
    assert JOB_TYPES == ("standard", "evaluation", "fed_opt", "diffusion_model")
    assert JOB_TYPE_CHOICES == (*JOB_TYPES, "multi_stage")
    assert job_type_name("multi_stage") == "diffusion_model"
    assert [job_type_name(t) for t in JOB_TYPES] == list(JOB_TYPES)
    with pytest.raises(
        ValueError, match=r"job type must be one of .*'diffusion_model', 'multi_stage'.*got 'segmentation'"
    ):
        job_type_name("segmentation")


# -- required files -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("job_type", JOB_TYPES)
def test_every_missing_required_file_is_named(tmp_path, job_type):
    required = REQUIRED_FILES[job_type]
    kept = required[0]
    app = _write(tmp_path / "app", {kept: "{}" if kept.endswith(".json") else "X = 1\n"})
    with pytest.raises(AppError) as info:
        inspect_app(app, job_type)
    message = str(info.value)
    missing = [f for f in required if f != kept]
    assert f"lacks {', '.join(missing)}:" in message
    assert f"a job of type {job_type} needs {', '.join(required)}" in message


def test_required_files_are_flips():
    training = ("trainer.py", "validator.py", "config.json", "models.py")
    assert REQUIRED_FILES == {
        "standard": training,
        "fed_opt": training,
        "diffusion_model": training,
        "evaluation": ("config.json", "evaluator.py", "models.py"),
    }


def test_an_evaluations_missing_checkpoint_is_named():
    with pytest.raises(
        AppError,
        match=r"unet_evaluation lacks model\.pt: the checkpoint\(s\) config\.json \"models\" "
        "names",
    ):
        inspect_app(EVALUATION_APP)


def test_models_without_get_model_is_refused(tmp_path):
    app = _copy(DICOM_APP, tmp_path)
    (app / "models.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(1, 1)\n")
    with pytest.raises(
        AppError,
        match=r"models\.py defines no get_model\(\): the server builds the initial global "
        r"model with models\.get_model\(\)",
    ):
        inspect_app(app)


def test_job_type_from_config_json_and_an_explicit_job_type_wins_with_a_note(tmp_path):
    assert inspect_app(DICOM_APP).job_type == "standard"
    app = inspect_app(DICOM_APP, "fed_opt")  # FLIP's standard apps also run as fed_opt
    assert app.job_type == "fed_opt"
    assert "--job-type fed_opt is used, not config.json's \"job_type\": 'standard'" in app.notes[0]
    created = create_job(DICOM_APP, tmp_path / "job", "fed_opt")
    assert json.loads((created.path / "app" / "custom" / "config.json").read_text())["job_type"] == "fed_opt"
    server, _ = _configs(created.path)
    assert _component(server, "shareable_generator")["path"] == "flip.nvflare.components.FedOptShareableGenerator"
    copy = _copy(DEMO_APP_DIR, tmp_path)  # no job_type in its config.json
    with pytest.raises(AppError, match=r"give --job-type \(one of \['standard'.*has no config\.json with \"job_type\""):
        inspect_app(copy)


# -- contracts ----------------------------------------------------------------------------------------------------
def test_the_test_apps_contracts():
    assert inspect_app(DICOM_APP).contracts == {"trainer.py": Contract.EXECUTOR, "validator.py": Contract.EXECUTOR}
    assert inspect_app(SEGMENTATION_APP).contracts == {
        "trainer.py": Contract.CLIENT_ALGO,
        "validator.py": Contract.CLIENT_ALGO,
    }
    assert inspect_app(DEMO_APP_DIR, "standard").contracts == {
        "trainer.py": Contract.PLAIN,
        "validator.py": Contract.PLAIN,
    }


_EXECUTOR = "from nvflare.apis.executor import Executor\n"


@pytest.mark.parametrize(
    "source, expected",
    [
        (_EXECUTOR + "class FLIP_TRAINER(Executor):\n    pass\n", Contract.EXECUTOR),
        (
            "import nvflare.apis.executor\nclass FLIP_TRAINER(nvflare.apis.executor.Executor):\n    pass\n",
            Contract.EXECUTOR,
        ),
        (
            "from nvflare.apis.executor import Executor as Base\nclass FLIP_TRAINER(Base):\n    pass\n",
            Contract.EXECUTOR,
        ),
        ("from monai.fl.client import ClientAlgo\nclass FLIP_TRAINER(ClientAlgo):\n    pass\n", Contract.CLIENT_ALGO),
        (
            "import monai.fl.client.client_algo as ca\nclass FLIP_TRAINER(ca.ClientAlgo):\n    pass\n",
            Contract.CLIENT_ALGO,
        ),
        (
            _EXECUTOR + "class FLIP_BASE(Executor):\n    pass\nclass FLIP_TRAINER(FLIP_BASE):\n    pass\n",
            Contract.EXECUTOR,
        ),
        (
            _EXECUTOR + "class Base(Executor):\n    pass\nclass Trainer(Base):\n    pass\nFLIP_TRAINER = Trainer\n",
            Contract.EXECUTOR,
        ),
        ("from helpers import Base\nclass FLIP_TRAINER(Base):\n    pass\n", Contract.CLIENT_ALGO),  # helpers.py below
        ("from helpers import FLIP_TRAINER\n", Contract.CLIENT_ALGO),
        ("class FLIP_TRAINER:\n    def __init__(self, config):\n        pass\n", Contract.PLAIN),
        ("class FLIP_TRAINER(object):\n    pass\n", Contract.PLAIN),
        ("from somewhere_else import Trainer\nclass FLIP_TRAINER(Trainer):\n    pass\n", Contract.PLAIN),
        (
            "class A(B):\n    pass\nclass B(A):\n    pass\nclass FLIP_TRAINER(A):\n    pass\n",
            Contract.PLAIN,
        ),  # a cycle ends
        ("class MY_TRAINER:\n    pass\n", None),
        ("FLIP_TRAINER = make_trainer()\n", None),
        ("if True:\n    class FLIP_TRAINER:\n        pass\n", None),  # only top-level statements are read
    ],
)
def test_contract_is_read_from_the_source(tmp_path, source, expected):
    app = _write(
        tmp_path / "app",
        {
            "trainer.py": source,
            "helpers.py": "from monai.fl.client import ClientAlgo\nclass Base(ClientAlgo):\n    pass\nFLIP_TRAINER = Base\n",
        },
    )
    assert detect_contract(app, "trainer.py", "FLIP_TRAINER") == expected


def test_a_validator_built_on_the_trainers_base_is_found_across_modules(tmp_path):
    """FLIP's spleen tutorial: ``from trainer import FLIP_BASE`` and ``class FLIP_VALIDATOR(FLIP_BASE)``."""
    app = _write(
        tmp_path / "app",
        {
            "trainer.py": _EXECUTOR
            + "class FLIP_BASE(Executor):\n    pass\nclass FLIP_TRAINER(FLIP_BASE):\n    pass\n",
            "validator.py": "from trainer import FLIP_BASE\nclass FLIP_VALIDATOR(FLIP_BASE):\n    pass\n",
        },
    )
    assert detect_contract(app, "validator.py", "FLIP_VALIDATOR") == Contract.EXECUTOR


def test_a_class_the_source_does_not_show_is_noted_and_taken_as_plain(tmp_path):
    app = _copy(DICOM_APP, tmp_path)
    (app / "trainer.py").write_text("class MY_TRAINER:\n    pass\n")
    found = inspect_app(app)
    assert found.contracts["trainer.py"] == Contract.PLAIN
    assert any(n.startswith("trainer.py: no class FLIP_TRAINER found in its source") for n in found.notes)


def test_an_entry_file_that_is_not_python_is_refused_with_its_line(tmp_path):
    app = _copy(DICOM_APP, tmp_path)
    (app / "validator.py").write_text("import torch\n\nclass FLIP_VALIDATOR(\n")
    with pytest.raises(AppError, match=r"validator\.py is not valid Python: SyntaxError at line 3"):
        inspect_app(app)


# -- config.json and rounds ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, error",
    [
        ("{not json", r"config\.json is not valid JSON \(line 1\): expected a JSON object"),
        ("[1, 2]", r"config\.json holds a JSON list: expected a JSON object"),
        ('{"GLOBAL_ROUNDS": 0}', r"config\.json GLOBAL_ROUNDS must be an integer >= 1, got 0"),
        ('{"GLOBAL_ROUNDS": "3"}', r"config\.json GLOBAL_ROUNDS must be an integer >= 1, got '3'"),
        ('{"GLOBAL_ROUNDS": true}', r"config\.json GLOBAL_ROUNDS must be an integer >= 1, got True"),
        ('{"GLOBAL_ROUNDS": 2.5}', r"config\.json GLOBAL_ROUNDS must be an integer >= 1, got 2\.5"),
        ('{"LOCAL_ROUNDS": NaN}', r"config\.json LOCAL_ROUNDS must be an integer >= 1, got nan"),
        ('{"GLOBAL_ROUNDS_AE": -1}', r"config\.json GLOBAL_ROUNDS_AE must be an integer >= 1, got -1"),
    ],
)
def test_a_bad_config_json_is_named(tmp_path, text, error):
    app = _copy(DICOM_APP, tmp_path)
    (app / "config.json").write_text(text)
    with pytest.raises(AppError, match=error):
        inspect_app(app, "standard")


def test_rounds_come_from_rounds_else_global_rounds_else_one(tmp_path):
    assert plan_job(DICOM_APP).rounds == 2  # config.json GLOBAL_ROUNDS
    plan = plan_job(DICOM_APP, rounds=5)
    assert (plan.rounds, plan.rounds_source, plan.config_updates) == (5, "--rounds", {"GLOBAL_ROUNDS": 5})
    app = _copy(DICOM_APP, tmp_path)
    config = json.loads((app / "config.json").read_text())
    del config["GLOBAL_ROUNDS"], config["LOCAL_ROUNDS"]
    (app / "config.json").write_text(json.dumps(config))
    plan = plan_job(app)
    assert (plan.rounds, plan.rounds_source) == (1, "default 1: config.json has no GLOBAL_ROUNDS")
    assert plan.config_updates == {"GLOBAL_ROUNDS": 1, "LOCAL_ROUNDS": 1}  # FLIP's bundler guarantees LOCAL_ROUNDS
    with pytest.raises(ValueError, match="rounds must be an integer >= 1, got 0"):
        plan_job(DICOM_APP, rounds=0)


def test_diffusion_stages_are_flips_task_names_and_rounds(tmp_path):
    app = _copy(DICOM_APP, tmp_path)
    config = json.loads((app / "config.json").read_text())
    config.update(job_type="diffusion_model", GLOBAL_ROUNDS_AE=3)
    (app / "config.json").write_text(json.dumps(config))
    plan = plan_job(app)
    assert plan.stages == [
        {"name": "ae", "num_rounds": 3, "train_task_name": "train_ae"},
        {"name": "dm", "num_rounds": 2, "train_task_name": "train_dm"},
    ]  # dm: GLOBAL_ROUNDS
    assert plan.config_updates == {"GLOBAL_ROUNDS_AE": 3, "GLOBAL_ROUNDS_DM": 2}


def test_a_plain_multi_stage_apps_stages_are_models_stages():
    plan = plan_job(MULTISTAGE_APP_DIR, "multi_stage", rounds=2)
    assert plan.stages == [{"name": "denoise", "num_rounds": 2}, {"name": "classify", "num_rounds": 2}]


@pytest.mark.parametrize("option, value", [("aggregation", "fedprox"), ("uncertainty", "swag")])
def test_an_option_that_changes_the_plain_contracts_training_is_refused_for_a_flip_trainer(option, value):
    with pytest.raises(
        AppError,
        match=f"{option} '{value}' changes the local training inside flip's plain contract: "
        "trainer.py's FLIP_TRAINER is FLIP's Executor contract",
    ):
        plan_job(DICOM_APP, **{option: value})
    assert plan_job(DEMO_APP_DIR, "standard", **{option: value}).rounds == 1  # the plain contract takes it


def test_an_evaluation_has_no_rounds_and_only_an_evaluation_has_sites(tmp_path):
    app = _copy(EVALUATION_APP, tmp_path)
    torch.save({}, app / "model.pt")
    with pytest.raises(ValueError, match="an evaluation job has no rounds"):
        plan_job(app, rounds=2)
    with pytest.raises(ValueError, match="min_clients is 3 but the job is deployed to 2 sites"):
        plan_job(app, min_clients=3)
    with pytest.raises(ValueError, match="a standard job is deployed to every site"):
        plan_job(DICOM_APP, sites=3)


# -- the job folder (our plain contract: runs without FLIP's executors) --------------------------------------------
def test_plain_app_job_folder_holds_the_values_given(tmp_path):
    app = _copy(DEMO_APP_DIR, tmp_path)
    (app / "requirements.txt").write_text("torch\n")
    (app / ".secret").write_text("not copied\n")
    created = create_job(app, tmp_path / "jobs" / "digits", "standard", model_id=MODEL_ID, min_clients=2, rounds=4)
    job = created.path
    assert job == tmp_path / "jobs" / "digits" and not list((tmp_path / "jobs").glob(".flip-job-*"))
    meta = json.loads((job / "meta.json").read_text())
    assert meta["name"] == "digits" and meta["min_clients"] == 2 and meta["deploy_map"] == {"app": ["@ALL"]}
    server, client = _configs(job)
    assert _component(server, "training")["args"]["num_rounds"] == 4
    assert _component(server, "training")["args"]["min_clients"] == 2
    assert _component(server, "persist_and_cleanup")["args"]["model_id"] == MODEL_ID
    assert _component(server, "server_event_handler")["args"]["model_id"] == MODEL_ID
    executors = _executors(client)
    assert executors["train"] == {"path": "flip.nvflare.executors.RUN_TRAINER", "args": {}}
    assert executors["validate"]["path"] == "flip.nvflare.executors.RUN_VALIDATOR"
    filters = {f["path"] for entry in client["task_result_filters"] for f in entry["filters"]}
    assert filters == {"flip.nvflare.components.PercentilePrivacy"}
    custom = job / "app" / "custom"
    assert sorted(p.name for p in custom.iterdir()) == [
        "config.json",
        "digits_data.py",
        "models.py",
        "requirements.txt",
        "trainer.py",
        "validator.py",
    ]
    assert json.loads((custom / "config.json").read_text()) == {
        **json.loads((app / "config.json").read_text()),
        "GLOBAL_ROUNDS": 4,
    }


def test_out_that_is_not_a_new_or_empty_folder_is_refused_untouched(tmp_path):
    out = _write(tmp_path / "out", {"keep.txt": "mine"})
    with pytest.raises(ValueError, match=f"--out {out} exists and is not an empty folder"):
        create_job(DEMO_APP_DIR, out, "standard")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert create_job(DEMO_APP_DIR, tmp_path / "empty", "standard").path == tmp_path / "empty"


def test_cli_job_create_names_what_is_missing(tmp_path, capsys):
    app = _write(tmp_path / "app", {"config.json": "{}", "trainer.py": "class FLIP_TRAINER:\n    pass\n"})
    assert flip_cli(["job", "create", str(app), "--job-type", "standard", "--out", str(tmp_path / "job")]) == 2
    assert f"flip: error: {app} lacks validator.py, models.py: a job of type standard needs" in capsys.readouterr().err
    assert not (tmp_path / "job").exists()


def test_cli_job_create_prints_the_job(tmp_path, capsys):
    rc = flip_cli(
        [
            "job",
            "create",
            str(DEMO_APP_DIR),
            "--job-type",
            "standard",
            "--out",
            str(tmp_path / "job"),
            "--model-id",
            MODEL_ID,
            "--min-clients",
            "2",
            "--rounds",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"job folder {tmp_path / 'job'}" in out
    assert f"job type standard, model id {MODEL_ID}, min clients 2" in out
    assert "trainer.py: flip's plain contract (FLIP_*(config)) -> RUN_TRAINER" in out
    assert "rounds: 3 (--rounds)" in out and f"flip simulate {tmp_path / 'job'} --sites 2" in out


# -- the job folder of FLIP's contracts (FLIP's executors from flip.nvflare.executors) ----------------------------
def test_executor_app_job_gives_the_project_and_query_to_flips_executors(tmp_path):
    created = create_job(
        DICOM_APP,
        tmp_path / "xray",
        model_id=MODEL_ID,
        project_id="proj-7",
        query="SELECT accession_id,\n       label FROM xray;",
        min_clients=2,
    )
    server, client = _configs(created.path)
    query = "SELECT accession_id,\n       label FROM xray;"
    executors = _executors(client)
    assert executors["train"] == {
        "path": "flip.nvflare.executors.RUN_TRAINER",
        "args": {"train_task_name": "train", "project_id": "proj-7", "query": query},
    }
    assert executors["validate"] == {
        "path": "flip.nvflare.executors.RUN_VALIDATOR",
        "args": {"validate_task_name": "validate", "project_id": "proj-7", "query": query},
    }
    assert _component(server, "training")["args"]["num_rounds"] == 2  # config.json GLOBAL_ROUNDS
    custom = created.path / "app" / "custom"
    assert {"query.md", "scores.py", "data_utils.py"} <= {p.name for p in custom.iterdir()}  # every file of the app


def test_client_algo_app_job_names_the_monai_fl_executors(tmp_path):
    created = create_job(SEGMENTATION_APP, tmp_path / "seg", model_id=MODEL_ID, project_id="p", query="q")
    executors = _executors(_configs(created.path)[1])
    assert executors["train"]["path"] == "flip.nvflare.executors.RUN_MONAI_FL_TRAINER"
    assert executors["validate"]["path"] == "flip.nvflare.executors.RUN_MONAI_FL_VALIDATOR"
    assert executors["train"]["args"]["project_id"] == "p" and executors["validate"]["args"]["query"] == "q"


def test_flip_evaluation_is_two_apps_and_the_checkpoint_stays_on_the_server(tmp_path):
    app = _copy(EVALUATION_APP, tmp_path)
    torch.save({"w": torch.zeros(1)}, app / "model.pt")
    created = create_job(app, tmp_path / "eval", model_id=MODEL_ID, min_clients=2, sites=["site-a", "site-b"])
    job = created.path
    meta = json.loads((job / "meta.json").read_text())
    assert meta["deploy_map"] == {"app_server": ["server"], "app": ["site-a", "site-b"]}
    assert sorted(p.name for p in (job / "app_server" / "config").iterdir()) == ["config_fed_server.json"]
    assert sorted(p.name for p in (job / "app" / "config").iterdir()) == ["config_fed_client.json"]
    assert (job / "app_server" / "custom" / "model.pt").read_bytes() == (app / "model.pt").read_bytes()
    assert not list((job / "app").rglob("*.pt"))
    server, _ = _configs(job, "app_server")
    _, client = _configs(job, "app")
    evaluate = _component(server, "evaluate")
    assert evaluate["path"] == "flip.nvflare.controllers.FlipEvaluation"
    assert evaluate["args"]["evaluate_task_name"] == "evaluation" and evaluate["args"]["min_clients"] == 2
    executors = _executors(client)
    assert executors["evaluation"]["path"] == "flip.nvflare.executors.RUN_EVALUATOR"
    assert executors["evaluation"]["args"]["evaluate_task_name"] == "evaluation"
    assert {"models.py", "config.json", "evaluator.py", "README.md"} <= {
        p.name for p in (job / "app" / "custom").iterdir()
    }


def test_flip_diffusion_job_runs_one_trainer_per_stage_task(tmp_path):
    app = _copy(DICOM_APP, tmp_path)
    config = json.loads((app / "config.json").read_text())
    config.update(job_type="diffusion_model", GLOBAL_ROUNDS_AE=1, GLOBAL_ROUNDS_DM=2)
    (app / "config.json").write_text(json.dumps(config))
    created = create_job(app, tmp_path / "ldm", model_id=MODEL_ID, min_clients=2)
    server, client = _configs(created.path)
    assert _component(server, "training")["args"]["stages"] == [
        {"name": "ae", "num_rounds": 1, "train_task_name": "train_ae"},
        {"name": "dm", "num_rounds": 2, "train_task_name": "train_dm"},
    ]
    executors = _executors(client)
    assert executors["train_ae"]["args"]["train_task_name"] == "train_ae"
    assert executors["train_dm"]["args"]["train_task_name"] == "train_dm"
    (stage_filter,) = client["task_result_filters"]
    assert sorted(stage_filter["tasks"]) == ["train_ae", "train_dm"]
    assert stage_filter["filters"][0]["path"] == "flip.nvflare.components.StagePercentilePrivacy"
    custom = json.loads((created.path / "app" / "custom" / "config.json").read_text())
    assert (custom["GLOBAL_ROUNDS_AE"], custom["GLOBAL_ROUNDS_DM"]) == (1, 2)
