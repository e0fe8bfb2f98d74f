"""The FedOpt job: the standard job whose server applies the averaged update with an optimizer."""

from __future__ import annotations

from nvflare.job_config.api import FedJob

from flip.constants import FedOptimizer, JobName
from flip.jobs.common import DEFAULT_MODEL_ID, explicit
from flip.jobs.standard import standard_job
from flip.nvflare.components import FedOptShareableGenerator


def fed_opt_job(
    name: str = JobName.FED_OPT,
    model_id: str = DEFAULT_MODEL_ID,
    num_rounds: int = 3,
    min_clients: int = 2,
    optimizer: str = FedOptimizer.SGD,
    lr: float = 1.5,
    momentum: float = 0.6,
    beta1: float = 0.9,
    beta2: float = 0.99,
    eps: float = 1e-8,
    percentile: float = 10,
    gamma: float = 0.01,
    wait_after_min_clients: int = 60,
    app_dir=None,
    **options,
) -> FedJob:
    """Build the FedOpt job (server optimizer ``sgd`` with momentum, or ``adam``; see FedOptShareableGenerator).

    ``options`` are the standard job's methods and trainer options (``aggregation``, ``uncertainty``,
    ``model_test_after_each_round``, ``dp_epsilon``, ...: see :func:`standard_job`); FedDC does not combine.

    Raises:
        ValueError: a bad argument (named), e.g. an unknown optimizer.
    """
    generator = explicit(
        FedOptShareableGenerator(optimizer=optimizer, lr=lr, momentum=momentum, beta1=beta1, beta2=beta2, eps=eps),
        "optimizer",
        "lr",
        "momentum",
    )
    return standard_job(
        name=name,
        model_id=model_id,
        num_rounds=num_rounds,
        min_clients=min_clients,
        percentile=percentile,
        gamma=gamma,
        wait_after_min_clients=wait_after_min_clients,
        app_dir=app_dir,
        shareable_generator=generator,
        **options,
    )
