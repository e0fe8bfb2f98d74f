"""Hostile inputs: names with a trailing newline (item 13) and bad job/component arguments (item 14).

Every name rule lives in flip.checks and uses ``re.fullmatch``: a ``$``-anchored ``match`` accepted
``"global_model.pt\\n"`` and ``"job-1\\n"``. Every job and component argument is checked at construction, with a
message naming the argument and its value (before: ``validation_timeout=-5`` or ``'x'`` was accepted and failed
later; ``GaussianPrivacy(epsilon=1e9, rounds=1)`` failed in a root finder naming no argument).
"""

from __future__ import annotations

import math

import pytest

from flip import checks
from flip.jobs import JOBS, write_job
from flip.nvflare.components import (
    EvaluationJsonGenerator,
    EvaluationPTModelLocator,
    FedOptShareableGenerator,
    GaussianPrivacy,
    InitialPTModelLocator,
    PercentilePrivacy,
    PersistToS3AndCleanup,
    PTModelLocator,
    SampleWeightedAggregator,
    ServerEventHandler,
    StagePercentilePrivacy,
    UncertaintyPlan,
    ValidationJsonGenerator,
)
from flip.nvflare.controllers import (
    EvaluateModels,
    FedDCController,
    FlipScatterAndGather,
    InitTraining,
    MultiStageScatterAndGather,
    SwagRound,
)
from flip.platform.dev import LocalPlatform
from flip.provisioning import check_server_name, check_site_names

pytestmark = pytest.mark.unit

MODEL_ID = "5f2b7c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f"


# -- item 13: a trailing newline is not part of a name -------------------------------------------------------------


@pytest.mark.parametrize(
    "check, value",
    [
        (checks.check_object_key, "global_model.pt\n"),
        (checks.check_object_key, "report/index.html\n"),
        (lambda v: checks.check_path_name("job id", v), "job-1\n"),
        (lambda v: checks.check_path_name("site name", v), "site-1\n"),
        (checks.check_bucket_name, "flip-models\n"),
        (checks.check_model_id, MODEL_ID + "\n"),
        (lambda v: checks.check_relative_name("json_file_name", v, ".json"), "cross_val_results.json\n"),
        (lambda v: checks.check_component_id("persistor_id", v), "persistor\n"),
        (lambda v: check_site_names([v]), "site-1\n"),
        (check_server_name, "localhost\n"),
        (check_server_name, "fl.example.org\n"),
    ],
)
def test_trailing_newline_is_refused_by_every_name_rule(check, value):
    with pytest.raises(ValueError, match=r"\\n"):
        check(value)


def test_platform_refuses_a_job_id_with_a_newline(tmp_path):
    platform = LocalPlatform(tmp_path)
    with pytest.raises(ValueError, match="job id 'job-1\\\\n' is invalid"):
        platform.site_images_dir("site-1", "job-1\n")


def test_names_without_newline_still_pass():
    assert checks.check_object_key("results/cross_val_results.json") == "results/cross_val_results.json"
    assert checks.check_path_name("job id", "job-1") == "job-1"
    assert checks.check_bucket_name("flip-models") == "flip-models"
    assert checks.check_model_id(MODEL_ID.upper()) == MODEL_ID
    assert check_server_name("fl.example.org") == "fl.example.org"


# -- item 14: every argument checked at construction, named with its value ------------------------------------------

BAD_ARGUMENTS = [
    (FlipScatterAndGather, {"validation_timeout": -5}, "validation_timeout"),
    (FlipScatterAndGather, {"validation_timeout": "x"}, "validation_timeout"),
    (FlipScatterAndGather, {"validation_timeout": 0}, "validation_timeout"),
    (FlipScatterAndGather, {"train_timeout": -1}, "train_timeout"),
    (FlipScatterAndGather, {"train_timeout": 1.5}, "train_timeout"),
    (FlipScatterAndGather, {"min_clients": 0}, "min_clients"),
    (FlipScatterAndGather, {"num_rounds": True}, "num_rounds"),
    (FlipScatterAndGather, {"wait_time_after_min_received": -1}, "wait_time_after_min_received"),
    (FlipScatterAndGather, {"fedprox_mu": math.nan}, "fedprox_mu"),
    (FlipScatterAndGather, {"model_test_after_each_round": "yes"}, "model_test_after_each_round"),
    (FlipScatterAndGather, {"aggregator_id": ""}, "aggregator_id"),
    (FlipScatterAndGather, {"persistor_id": "persistor\n"}, "persistor_id"),
    (FlipScatterAndGather, {"train_task_name": 7}, "train_task_name"),
    (
        MultiStageScatterAndGather,
        {"stages": [{"name": "a", "num_rounds": 1}], "validation_timeout": "x"},
        "validation_timeout",
    ),
    (MultiStageScatterAndGather, {"stages": [{"name": "a", "num_rounds": 0}]}, "stages[0].num_rounds"),
    (FedDCController, {"seed": "x"}, "seed"),
    (FedDCController, {"daisy_chain_period": 0}, "daisy_chain_period"),
    (FedDCController, {"validation_timeout": -5}, "validation_timeout"),
    (FedDCController, {"model_test_after_each_round": 1}, "model_test_after_each_round"),
    (FedDCController, {"aggregator_id": None}, "aggregator_id"),
    (SwagRound, {"swag_epochs": 1}, "swag_epochs"),
    (SwagRound, {"persistor_id": ""}, "persistor_id"),
    (InitTraining, {"timeout": True}, "timeout"),
    (InitTraining, {"wait_time_after_min_received": -1}, "wait_time_after_min_received"),
    (EvaluateModels, {"model_ids": []}, "model_ids"),
    (EvaluateModels, {"model_ids": ["not-a-uuid"]}, "model_id"),
    (EvaluateModels, {"model_locator_id": ""}, "model_locator_id"),
    (SampleWeightedAggregator, {"min_accepted": 0}, "min_accepted"),
    (SampleWeightedAggregator, {"max_num_samples": -1}, "max_num_samples"),
    (SampleWeightedAggregator, {"max_update_norm": math.inf}, "max_update_norm"),
    (SampleWeightedAggregator, {"norm_ratio_limit": 0.5}, "norm_ratio_limit"),
    (SampleWeightedAggregator, {"ensemble": "yes"}, "ensemble"),
    (SampleWeightedAggregator, {"delete_local_models_after_aggregation": 1}, "delete_local_models_after_aggregation"),
    (FedOptShareableGenerator, {"optimizer": "rmsprop"}, "optimizer"),
    (FedOptShareableGenerator, {"lr": 0}, "lr"),
    (FedOptShareableGenerator, {"momentum": 1}, "momentum"),
    (FedOptShareableGenerator, {"beta2": math.nan}, "beta2"),
    (UncertaintyPlan, {"method": "bayes"}, "method"),
    (UncertaintyPlan, {"mc_dropout_samples": 1}, "mc_dropout_samples"),
    (PercentilePrivacy, {"percentile": 101}, "percentile"),
    (StagePercentilePrivacy, {"gamma": math.inf}, "gamma"),
    (GaussianPrivacy, {"noise_multiplier": 1.0, "delta": 1}, "delta"),
    (GaussianPrivacy, {"epsilon": 8.0, "rounds": 0}, "rounds"),
    (GaussianPrivacy, {"noise_multiplier": 1.0, "seed": "x"}, "seed"),
    (GaussianPrivacy, {"epsilon": 1e9, "rounds": 1}, "epsilon"),
    (ValidationJsonGenerator, {"results_dir": "../up"}, "results_dir"),
    (EvaluationJsonGenerator, {"json_file_name": "results.txt"}, "json_file_name"),
    (ServerEventHandler, {"model_id": "x"}, "model_id"),
    (ServerEventHandler, {"model_id": MODEL_ID, "persist_and_cleanup_id": 5}, "persist_and_cleanup_id"),
    (ServerEventHandler, {"model_id": MODEL_ID, "validation_json_generator_id": ""}, "validation_json_generator_id"),
    (PersistToS3AndCleanup, {"model_id": MODEL_ID, "persistor_id": 5}, "persistor_id"),
    (PTModelLocator, {"exclude_vars": "("}, "exclude_vars"),
    (PTModelLocator, {"model": "models.get_model"}, "model"),
    (InitialPTModelLocator, {"model": {"path": 3}}, "model"),
    (EvaluationPTModelLocator, {"exclude_vars": 5}, "exclude_vars"),
]


@pytest.mark.parametrize(
    "factory, kwargs, name", BAD_ARGUMENTS, ids=[f"{f.__name__}-{'-'.join(k)}" for f, k, _ in BAD_ARGUMENTS]
)
def test_bad_argument_is_refused_at_construction_naming_it(factory, kwargs, name):
    with pytest.raises(ValueError) as refused:
        factory(**kwargs)
    message = str(refused.value)
    assert name in message, message
    if name in kwargs and not isinstance(kwargs[name], (list, dict)):
        assert f"got {kwargs[name]!r}" in message or f"{name}={kwargs[name]!r}" in message, message


@pytest.mark.parametrize(
    "options, name",
    [
        ({"num_rounds": 0}, "num_rounds"),
        ({"min_clients": "2"}, "min_clients"),
        ({"wait_after_min_clients": -1}, "wait_after_min_clients"),
        ({"name": "../escape"}, "job name"),
        ({"aggregation": "fedsgd"}, "aggregation"),
        ({"uncertainty": "bayes"}, "uncertainty"),
        ({"skip_model_tests": "no"}, "skip_model_tests"),
        ({"aggregation": "fedprox", "fedprox_mu": -1.0}, "fedprox_mu"),
        ({"uncertainty": "swag", "swag_epochs": 1}, "swag_epochs"),
        ({"dp_epsilon": -1.0}, "epsilon"),
        ({"dp_noise_multiplier": 1.0, "dp_clip_norm": 0}, "clip_norm"),
    ],
)
def test_job_builder_refuses_bad_options_before_writing(tmp_path, options, name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        JOBS["standard"](**options)
    if "name" not in options:
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            write_job("standard", tmp_path, **options)
        assert not any(tmp_path.iterdir()), "nothing is written for a refused job"


def test_unreachable_epsilon_names_its_arguments_and_the_reachable_range():
    with pytest.raises(ValueError) as refused:
        GaussianPrivacy(epsilon=1e9, rounds=1)
    message = str(refused.value)
    for part in ("epsilon", "rounds=1", "delta", "achievable"):
        assert part in message, message
