"""The user-code contract: every missing file, class or function is named, with what was expected."""

from __future__ import annotations

import shutil

import pytest
import torch

from flip.errors import UserCodeError
from flip.jobs import DEMO_APP_DIR
from flip.nvflare.executors.run_trainer import training_result
from flip.nvflare.executors.user_code import build_model, instantiate, load_class, load_config

pytestmark = pytest.mark.unit


@pytest.fixture
def app(tmp_path):
    """A copy of the demo app to break in each test."""
    target = tmp_path / "custom"
    shutil.copytree(DEMO_APP_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_the_demo_app_loads(app):
    cls = load_class(app, "trainer.py", "FLIP_TRAINER", ("train",))
    assert cls.__name__ == "FLIP_TRAINER"
    assert isinstance(build_model(app), torch.nn.Module)
    assert load_config(app)["LOCAL_ROUNDS"] >= 1


def test_missing_trainer_file(app):
    (app / "trainer.py").unlink()
    with pytest.raises(
        UserCodeError, match=r"custom/trainer.py not found: .* defining class FLIP_TRAINER with method\(s\) train"
    ):
        load_class(app, "trainer.py", "FLIP_TRAINER", ("train",))


def test_missing_trainer_class(app):
    (app / "trainer.py").write_text("class Trainer:\n    def train(self, model, ctx):\n        return {}\n")
    with pytest.raises(
        UserCodeError, match=r"custom/trainer.py does not define FLIP_TRAINER: expected class FLIP_TRAINER"
    ):
        load_class(app, "trainer.py", "FLIP_TRAINER", ("train",))


def test_trainer_class_without_train_method(app):
    (app / "trainer.py").write_text("class FLIP_TRAINER:\n    def fit(self, model, ctx):\n        return {}\n")
    with pytest.raises(UserCodeError, match=r"custom/trainer.py: class FLIP_TRAINER has no method train\(\)"):
        load_class(app, "trainer.py", "FLIP_TRAINER", ("train",))


def test_trainer_name_that_is_not_a_class(app):
    (app / "trainer.py").write_text("FLIP_TRAINER = 3\n")
    with pytest.raises(UserCodeError, match=r"custom/trainer.py: FLIP_TRAINER is a int, expected class FLIP_TRAINER"):
        load_class(app, "trainer.py", "FLIP_TRAINER", ("train",))


def test_missing_validator_file(app):
    (app / "validator.py").unlink()
    with pytest.raises(
        UserCodeError, match=r"custom/validator.py not found: .* class FLIP_VALIDATOR with method\(s\) validate"
    ):
        load_class(app, "validator.py", "FLIP_VALIDATOR", ("validate",))


def test_missing_models_file(app):
    (app / "models.py").unlink()
    with pytest.raises(UserCodeError, match=r"custom/models.py not found: .* defining function get_model\(\)"):
        build_model(app)


def test_missing_get_model_function(app):
    (app / "models.py").write_text("def build():\n    return None\n")
    with pytest.raises(
        UserCodeError, match=r"custom/models.py does not define get_model\(\): expected function get_model\(\)"
    ):
        build_model(app)


def test_get_model_returning_no_module(app):
    (app / "models.py").write_text("def get_model():\n    return {'weights': 1}\n")
    with pytest.raises(UserCodeError, match=r"get_model\(\) returned a dict, expected a torch.nn.Module"):
        build_model(app)


def test_user_file_with_a_syntax_error(app):
    (app / "models.py").write_text("def get_model(:\n")
    with pytest.raises(UserCodeError, match=r"custom/models.py could not be imported: SyntaxError at line 1"):
        build_model(app)


def test_user_file_importing_a_missing_package(app):
    (app / "models.py").write_text("import package_that_does_not_exist\n")
    with pytest.raises(UserCodeError, match=r"custom/models.py could not be imported: ModuleNotFoundError"):
        build_model(app)


def test_missing_config(app):
    (app / "config.json").unlink()
    with pytest.raises(UserCodeError, match=r"custom/config.json not found: .* \(a JSON object\)"):
        load_config(app)


def test_config_not_json(app):
    (app / "config.json").write_text('{\n  "LOCAL_ROUNDS": 2,\n}\n')
    with pytest.raises(UserCodeError, match=r"custom/config.json is not valid JSON \(line 3\)"):
        load_config(app)


def test_config_not_an_object(app):
    (app / "config.json").write_text("[1, 2]")
    with pytest.raises(UserCodeError, match=r"custom/config.json holds a JSON list: expected a JSON object"):
        load_config(app)


def test_constructor_that_does_not_take_config(app):
    (app / "trainer.py").write_text(
        "class FLIP_TRAINER:\n    def __init__(self):\n        pass\n    def train(self, m, c):\n        return {}\n"
    )
    cls = load_class(app, "trainer.py", "FLIP_TRAINER", ("train",))
    with pytest.raises(UserCodeError, match=r"custom/trainer.py: FLIP_TRAINER\(config\) raised TypeError"):
        instantiate(cls, {}, "trainer.py")


@pytest.mark.parametrize(
    "returned, message",
    [
        ({"loss": 0.1}, "must return 'num_samples', a positive integer"),
        ({"num_samples": 0}, "must return 'num_samples', a positive integer"),
        ({"num_samples": 10, "num_steps": -1}, "returned 'num_steps' -1: expected a positive integer"),
        ({"num_samples": 10, "loss": float("nan")}, "returned metric 'loss' that is not finite"),
        ({"num_samples": 10, "loss": "low"}, "returned metric 'loss' of type str: expected a number"),
        ({"num_samples": 10, "bad name!": 1.0}, "returned a metric named 'bad name!'"),
        ([1, 2], "must return a dict of metrics, got list"),
    ],
)
def test_bad_training_results_are_named(returned, message):
    with pytest.raises(UserCodeError, match=message):
        training_result(returned, "custom/trainer.py: FLIP_TRAINER.train")


def test_training_result_splits_counts_from_metrics():
    assert training_result({"num_samples": 12, "num_steps": 3, "loss": torch.tensor(0.5)}, "t") == (
        12,
        3,
        {"loss": 0.5},
    )
    assert training_result({"num_samples": 12}, "t") == (12, 1, {})
