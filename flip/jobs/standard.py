"""The standard FLIP job: init training -> rounds -> cross-site validation -> S3, with FLIP's methods and options."""

from __future__ import annotations

from pathlib import Path

from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator
from nvflare.job_config.api import FedJob

from flip.checks import check_bool, check_choice, check_positive_int
from flip.constants import AGGREGATIONS, UNCERTAINTY_METHODS, Aggregation, ComponentId, FlipTask, JobName, Uncertainty
from flip.jobs.common import (
    DEFAULT_MODEL_ID,
    DEMO_APP_DIR,
    add_lifecycle,
    add_site_basics,
    add_training_server,
    add_training_sites,
    check_keep_best,
    explicit,
    new_job,
)
from flip.methods.feddc import training_rounds
from flip.nvflare.components import (
    GaussianPrivacy,
    PercentilePrivacy,
    SampleWeightedAggregator,
    UncertaintyPlan,
    ValidationJsonGenerator,
)
from flip.nvflare.controllers.feddc import FedDCController
from flip.nvflare.controllers.swag import SwagRound
from flip.nvflare.controllers.training import FlipScatterAndGather, check_mu


def check_options(
    aggregation: str,
    uncertainty: str,
    fedprox_mu: float,
    model_test_after_each_round: bool,
    skip_model_tests: bool,
    delete_local_models_after_aggregation: bool,
) -> None:
    """Raise ValueError naming the first bad option. ``skip_model_tests`` wins over ``model_test_after_each_round``
    (as in the DLR demonstrator: no tests at all)."""
    check_choice("aggregation", aggregation, AGGREGATIONS)
    check_choice("uncertainty", uncertainty, UNCERTAINTY_METHODS)
    if aggregation == Aggregation.FEDPROX and not check_mu(fedprox_mu) > 0:
        raise ValueError(f"aggregation {Aggregation.FEDPROX!r} needs fedprox_mu > 0, got {fedprox_mu!r}")
    check_bool("model_test_after_each_round", model_test_after_each_round)
    check_bool("skip_model_tests", skip_model_tests)
    check_bool("delete_local_models_after_aggregation", delete_local_models_after_aggregation)


def training_workflow(
    aggregation: str,
    min_clients: int,
    num_rounds: int,
    wait_after_min_clients: int,
    fedprox_mu: float,
    daisy_chain_period: int,
    seed: int,
    model_test_after_each_round: bool,
):
    check_positive_int("num_rounds", num_rounds)
    if aggregation == Aggregation.FEDDC:
        workflow = FedDCController(
            num_rounds=num_rounds,
            daisy_chain_period=daisy_chain_period,
            min_clients=min_clients,
            seed=seed,
            model_test_after_each_round=model_test_after_each_round,
        )
        return explicit(workflow, "daisy_chain_period", "seed", "model_test_after_each_round")
    workflow = FlipScatterAndGather(
        min_clients=min_clients,
        num_rounds=num_rounds,
        wait_time_after_min_received=wait_after_min_clients,
        aggregator_id=ComponentId.AGGREGATOR,
        persistor_id=ComponentId.PERSISTOR,
        shareable_generator_id=ComponentId.SHAREABLE_GENERATOR,
        train_task_name=FlipTask.TRAIN,
        fedprox_mu=fedprox_mu if aggregation == Aggregation.FEDPROX else 0.0,
        model_test_after_each_round=model_test_after_each_round,
    )
    return explicit(
        workflow,
        "aggregator_id",
        "persistor_id",
        "shareable_generator_id",
        "train_task_name",
        "model_test_after_each_round",
    )


def standard_job(
    name: str = JobName.STANDARD,
    model_id: str = DEFAULT_MODEL_ID,
    num_rounds: int = 3,
    min_clients: int = 2,
    percentile: float = 10,
    gamma: float = 0.01,
    wait_after_min_clients: int = 60,
    app_dir: str | Path | None = None,
    shareable_generator=None,
    aggregation: str = Aggregation.FEDAVG,
    fedprox_mu: float = 0.01,
    daisy_chain_period: int = 2,
    seed: int = 0,
    uncertainty: str = Uncertainty.NONE,
    swag_epochs: int = 3,
    model_test_after_each_round: bool = True,
    skip_model_tests: bool = False,
    delete_local_models_after_aggregation: bool = True,
    initial_model: str | None = None,
    keep_round_models: bool = False,
    keep_best: str | None = None,
    keep_best_mode: str = "max",
    dp_epsilon: float | None = None,
    dp_noise_multiplier: float | None = None,
    dp_delta: float = 1e-5,
    dp_clip_norm: float = 1.0,
    dp_max_epsilon: float | None = None,
    defer_privacy_to_site: bool = False,
    trainer=None,
    validator=None,
) -> FedJob:
    """Build the standard job.

    Args:
        name: job (folder) name.
        model_id: the model's UUID (the S3 key's first part).
        num_rounds: training rounds (>= 1). Default 3.
        min_clients: sites needed to start and in each round (>= 1). Default 2.
        percentile, gamma: the sites' PercentilePrivacy filter. Defaults 10 / 0.01 (share ~90% of each update).
        wait_after_min_clients: once min_clients sites answered a task, seconds to wait for the others (no wait
            once all answered); later answers are discarded as stale. Default 60.
        app_dir: the user's code to put in custom/ (default: the demo app).
        shareable_generator: how the averaged update becomes the global model (default: add it; FedOpt's generator
            makes it a server optimizer step).
        aggregation: ``fedavg`` (weighted by samples), ``fedprox`` (with ``fedprox_mu`` > 0) or ``feddc`` (local
            models daisy-chained between sites, averaged every ``daisy_chain_period`` rounds, routes from ``seed``;
            ``num_rounds`` then counts aggregations and the run trains num_rounds × daisy_chain_period rounds, as
            the DLR demonstrator counts them).
        uncertainty: ``none``, ``ensemble`` (keep every site's last local model), ``mc_dropout`` (record it, check
            the model has dropout) or ``swag`` (one SWAG round of ``swag_epochs`` snapshots after training).
        model_test_after_each_round: every site validates each new global model (the round waits for every
            site's answer). Default True, as in the DLR demonstrator.
        skip_model_tests: no validation at all (no per-round tests, no cross-site validation; it wins over
            model_test_after_each_round, as in DLR). Default False.
        delete_local_models_after_aggregation: no site's local model outlives its round (none is written to the
            server's disk). Default True, as in DLR; False keeps every round's on the server and uploads the latest
            round's as ``local_models/<site>.pt``.
        initial_model: ``MODEL_ID`` or ``MODEL_ID/RUN_ID`` of a registry model to start from (default: the
            platform's initial model if there is one, else models.get_model()). A model that does not fit
            models.get_model() ends the run in ERROR naming the first mismatching key.
        keep_round_models: keep every round's global model (``rounds/global_model_round_<n>.pt``). Default False.
        keep_best: a validation metric (e.g. ``accuracy``): NVFlare's model selector keeps the global model with the
            best per-round test (``best_global_model.pt``); ``keep_best_mode`` ``max`` (default) or ``min`` (a loss).
            Default None: no best model (never fabricated).
        dp_epsilon or dp_noise_multiplier: add GaussianPrivacy at every site (after PercentilePrivacy): client-level
            (ε, δ)-DP, ``dp_epsilon`` spent over ``num_rounds`` (the noise is calibrated) or a given noise
            multiplier; updates clipped to ``dp_clip_norm``; the budget ``dp_max_epsilon`` (default dp_epsilon)
            stops training cleanly before any site would exceed it.
        defer_privacy_to_site: the job's PercentilePrivacy leaves an update to the site's own policy when that
            already filtered it with a percentile filter (``defer_to_site``); at a site without such a policy it
            still applies. Default False: both apply (each site's run log and the run report say so).
        trainer, validator: the sites' executors of the user's trainer (on ``train``, and ``swag``) and validator
            (on ``validate``); default our ``RUN_TRAINER()`` / ``RUN_VALIDATOR()`` (flip.jobs.flip_app chooses
            FLIP's for a FLIP app).

    Raises:
        ValueError: a bad or conflicting argument (named).
    """
    check_options(
        aggregation,
        uncertainty,
        fedprox_mu,
        model_test_after_each_round,
        skip_model_tests,
        delete_local_models_after_aggregation,
    )
    model_test_after_each_round = model_test_after_each_round and not skip_model_tests
    check_keep_best(keep_best, model_test_after_each_round, skip_model_tests)
    if (dp_epsilon is not None or dp_noise_multiplier is not None) and uncertainty == Uncertainty.SWAG:
        raise ValueError(
            f"differential privacy and uncertainty {Uncertainty.SWAG!r} cannot be combined: the SWAG "
            "round would need its own privacy budget"
        )
    if aggregation == Aggregation.FEDDC and shareable_generator is not None:
        raise ValueError(
            f"aggregation {Aggregation.FEDDC!r} averages local models itself: it takes no shareable_generator"
        )
    job = new_job(name, model_id, min_clients, wait_after_min_clients)
    add_lifecycle(
        job, model_id, ValidationJsonGenerator(), min_clients=min_clients, wait_after_min_clients=wait_after_min_clients
    )
    if uncertainty != Uncertainty.NONE:
        job.to_server(UncertaintyPlan(method=uncertainty), id="uncertainty")
    aggregator = explicit(
        SampleWeightedAggregator(
            min_accepted=min_clients,
            ensemble=uncertainty == Uncertainty.ENSEMBLE,
            delete_local_models_after_aggregation=delete_local_models_after_aggregation,
        ),
        "min_accepted",
    )
    swag = uncertainty == Uncertainty.SWAG
    after = [(SwagRound(swag_epochs=swag_epochs, min_clients=min_clients), "swag")] if swag else []
    generator = None if aggregation == Aggregation.FEDDC else shareable_generator or FullModelShareableGenerator()
    workflow = training_workflow(
        aggregation,
        min_clients,
        num_rounds,
        wait_after_min_clients,
        fedprox_mu,
        daisy_chain_period,
        seed,
        model_test_after_each_round,
    )
    add_training_server(
        job,
        generator,
        workflow,
        aggregator,
        after,
        model_tests=not skip_model_tests,
        initial_model=initial_model,
        keep_round_models=keep_round_models,
        keep_best=keep_best,
        keep_best_mode=keep_best_mode,
    )
    dp_filter = None
    if dp_epsilon is not None or dp_noise_multiplier is not None:
        # the updates a site sends: FedDC trains num_rounds × daisy_chain_period rounds (DLR's count)
        updates = training_rounds(num_rounds, daisy_chain_period) if aggregation == Aggregation.FEDDC else num_rounds
        dp_filter = GaussianPrivacy(
            clip_norm=dp_clip_norm,
            noise_multiplier=dp_noise_multiplier,
            epsilon=dp_epsilon,
            delta=dp_delta,
            rounds=updates if dp_epsilon is not None else None,
            max_epsilon=dp_max_epsilon,
        )
    check_bool("defer_privacy_to_site", defer_privacy_to_site)
    job_filter = PercentilePrivacy(percentile=percentile, gamma=gamma, defer_to_site=defer_privacy_to_site)
    trainers = None if trainer is None else [(trainer, [FlipTask.TRAIN, FlipTask.SWAG] if swag else [FlipTask.TRAIN])]
    add_training_sites(job, job_filter, swag=swag, dp_filter=dp_filter, trainers=trainers, validator=validator)
    add_site_basics(job, app_dir or DEMO_APP_DIR, JobName.STANDARD)
    return job
