"""The checked-in job folders are exactly what flip/jobs writes (one Python source of truth)."""

from __future__ import annotations

import ast
import filecmp
import importlib.util
import inspect
import json

import pytest

from flip.constants import JOB_NAMES
from flip.jobs import DEMO_APP_DIR, JOBS, write_job
from flip.nvflare import components
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def _tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", sorted(JOBS))
def test_checked_in_job_equals_generator_output(tmp_path, name):
    generated = write_job(name, tmp_path)
    committed = REPO / "jobs" / name
    assert _tree(generated) == _tree(committed), "run `make jobs` and commit jobs/"
    for rel in _tree(generated):
        assert filecmp.cmp(generated / rel, committed / rel, shallow=False), f"{name}/{rel} differs: run `make jobs`"


def test_standard_job_names_public_component_paths_and_documented_privacy_defaults():
    client = json.loads((REPO / "jobs/standard/app/config/config_fed_client.json").read_text())
    server = json.loads((REPO / "jobs/standard/app/config/config_fed_server.json").read_text())
    paths = {c["path"] for c in server["components"] + client["components"]}
    assert {
        f"flip.nvflare.components.{n}"
        for n in (
            "ServerEventHandler",
            "PersistToS3AndCleanup",
            "ValidationJsonGenerator",
            "PTModelLocator",
            "ClientEventHandler",
        )
    } <= paths
    (train_filter,) = [f for f in client["task_result_filters"] if f["tasks"] == ["train"]]
    (privacy,) = train_filter["filters"]
    assert privacy["path"] == "flip.nvflare.components.PercentilePrivacy"
    assert privacy["args"]["percentile"] == 10 and privacy["args"]["gamma"] == 0.01
    assert all(p.split(".")[-1] in components.__all__ for p in paths if p.startswith("flip.nvflare.components"))


def test_standard_job_carries_the_user_app():
    custom = REPO / "jobs/standard/app/custom"
    assert {"trainer.py", "validator.py", "models.py", "config.json"} <= {p.name for p in custom.iterdir()}
    assert not list(custom.rglob("__pycache__"))


def test_job_builder_names_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_rounds must be an integer >= 1, got 0"):
        write_job("standard", tmp_path, num_rounds=0)
    with pytest.raises(ValueError, match="model_id must be a UUID"):
        write_job("standard", tmp_path, model_id="not-a-uuid")
    with pytest.raises(ValueError, match="percentile must be a finite number in \\[0, 100\\], got 120"):
        write_job("standard", tmp_path, percentile=120)
    with pytest.raises(ValueError, match="unknown job 'nope'"):
        write_job("nope", tmp_path)


def _named_paths(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "path" and isinstance(value, str):
                yield value
            else:
                yield from _named_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from _named_paths(value)


@pytest.mark.parametrize(
    "name, options",
    [
        ("standard", {}),
        ("evaluation", {}),
        ("fed_opt", {}),
        ("multi_stage", {}),
        ("standard", {"aggregation": "feddc", "uncertainty": "ensemble"}),
        ("standard", {"uncertainty": "swag", "model_test_after_each_round": True}),
        ("standard", {"dp_epsilon": 8.0}),
    ],
)
def test_every_flip_class_a_job_names_has_a_public_path(tmp_path, name, options):
    """A job config names each flip class as flip.nvflare.{components,controllers,executors}.<Class>, exported in
    that package's __all__ (old jobs named e.g. flip.nvflare.aggregator.SampleWeightedAggregator)."""
    folder = write_job(name, tmp_path, **options)
    paths = {p for config in folder.glob("*/config/*.json") for p in _named_paths(json.loads(config.read_text()))}
    ours = sorted(p for p in paths if p.startswith("flip."))
    assert ours
    for path in ours:
        package, cls = path.rsplit(".", 1)
        assert package in ("flip.nvflare.components", "flip.nvflare.controllers", "flip.nvflare.executors"), path
        assert cls in importlib.import_module(package).__all__, path


def test_job_names_have_one_source():
    assert tuple(JOBS) == JOB_NAMES
    assert sorted(p.name for p in (REPO / "jobs").iterdir() if p.is_dir()) == sorted(JOB_NAMES)


def _imported_modules(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", sorted(JOBS))
def test_job_folder_is_self_contained(name):
    """Every module the user's code imports is installed or in the job's custom/ folder (the multi-stage demo's
    digits_data.py comes from the demo app: one copy in flip/demo)."""
    custom = REPO / "jobs" / name / "app" / "custom"
    for path in sorted(custom.glob("*.py")):
        for module in _imported_modules(path):
            assert (custom / f"{module}.py").is_file() or importlib.util.find_spec(module), f"{path.name}: {module}"


def test_one_digits_data_module():
    assert [p.relative_to(DEMO_APP_DIR.parent).as_posix() for p in DEMO_APP_DIR.parent.rglob("digits_data.py")] == [
        "app/digits_data.py"
    ]
    shipped = REPO / "jobs" / "multi_stage" / "app" / "custom" / "digits_data.py"
    assert shipped.read_bytes() == (DEMO_APP_DIR / "digits_data.py").read_bytes()


@pytest.mark.parametrize(
    "name, absent",
    [
        ("standard", {"evaluator.py"}),
        ("fed_opt", {"evaluator.py"}),
        ("multi_stage", {"evaluator.py"}),
        ("evaluation", {"trainer.py", "validator.py"}),
    ],
)
def test_a_job_carries_no_entry_file_it_never_runs(name, absent):
    custom = {p.name for p in (REPO / "jobs" / name / "app" / "custom").iterdir()}
    assert not custom & absent
    assert {"models.py", "config.json", "digits_data.py"} <= custom  # helper modules are copied as before


def test_an_unused_entry_file_that_the_app_imports_is_kept(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    for name in ("models.py", "config.json", "trainer.py", "validator.py", "helpers.py"):
        (app / name).write_text("{}" if name.endswith(".json") else "X = 1\n")
    (app / "evaluator.py").write_text("from helpers import X\n")
    (app / "helpers.py").write_text("import trainer\n")  # the evaluator needs trainer.py through helpers.py
    folder = write_job("evaluation", tmp_path / "out", app_dir=app)
    custom = {p.name for p in (folder / "app" / "custom").iterdir()}
    assert custom == {"models.py", "config.json", "evaluator.py", "helpers.py", "trainer.py"}


def test_job_folders_are_marked_generated():
    assert "jobs/** linguist-generated=true" in (REPO / ".gitattributes").read_text().splitlines()


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_job_has_the_server_poll_sites_every_half_second(tmp_path, name):
    """A site with no task waits ``task_request_interval`` before asking again (NVFlare's default: 2 s): every gap in a
    run (after InitTraining, between rounds, before cross-site validation) cost up to 2 s per site."""
    from nvflare.private.fed.server.server_json_config import ServerJsonConfigurator

    from flip.jobs.common import TASK_REQUEST_INTERVAL

    config = write_job(name, tmp_path) / "app" / "config" / "config_fed_server.json"
    assert json.loads(config.read_text())["server"] == {"task_request_interval": TASK_REQUEST_INTERVAL}
    assert TASK_REQUEST_INTERVAL < 2
    # NVFlare's server config reader takes it from there (internals row 45)
    source = inspect.getsource(ServerJsonConfigurator.process_config_element)
    assert 'path == "server.task_request_interval"' in source and "self.task_request_interval = element" in source
