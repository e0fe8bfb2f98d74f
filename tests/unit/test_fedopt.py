"""FedOpt's server step, checked by hand and against torch.optim, and through the NVFlare generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants

from flip.constants import FlipProp
from flip.methods.fedopt import FedOptState, fedopt_step
from flip.nvflare.components import FedOptShareableGenerator

pytestmark = pytest.mark.unit


def test_sgd_lr_one_without_momentum_is_fedavg():
    w, d = {"w": np.array([1.0, 2.0])}, {"w": np.array([0.5, -0.25])}
    np.testing.assert_allclose(fedopt_step(w, d, FedOptState(), "sgd", lr=1.0)["w"], [1.5, 1.75])


def test_sgd_momentum_by_hand():
    state = FedOptState()
    w = {"w": np.array([0.0])}
    w = fedopt_step(w, {"w": np.array([1.0])}, state, "sgd", lr=0.5, momentum=0.9)  # b = -1 -> w = 0.5
    np.testing.assert_allclose(w["w"], [0.5])
    w = fedopt_step(w, {"w": np.array([1.0])}, state, "sgd", lr=0.5, momentum=0.9)  # b = -1.9 -> w = 1.45
    np.testing.assert_allclose(w["w"], [1.45])


def test_adam_first_step_by_hand():
    # m_hat = g, v_hat = g^2: the first step moves every coordinate by lr * sign(update)
    w = fedopt_step(
        {"w": np.array([1.0, 1.0, 1.0])}, {"w": np.array([0.3, -2.0, 0.0])}, FedOptState(), "adam", lr=0.1, eps=1e-12
    )
    np.testing.assert_allclose(w["w"], [1.1, 0.9, 1.0])


@pytest.mark.parametrize(
    "kind, kwargs, torch_opt",
    [
        ("sgd", {"lr": 0.7, "momentum": 0.6}, lambda p: torch.optim.SGD(p, lr=0.7, momentum=0.6)),
        (
            "adam",
            {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6},
            lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.95), eps=1e-6),
        ),
    ],
)
def test_matches_torch_optim_over_several_steps(kind, kwargs, torch_opt):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(4, 3))
    param = torch.nn.Parameter(torch.tensor(start))
    opt = torch_opt([param])
    state, weights = FedOptState(), {"p": start.copy()}
    for _ in range(4):
        delta = rng.normal(size=(4, 3))
        weights = fedopt_step(weights, {"p": delta}, state, kind, **kwargs)
        param.grad = torch.tensor(-delta)
        opt.step()
        np.testing.assert_allclose(weights["p"], param.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_integer_buffers_are_averaged_not_optimized():
    w = fedopt_step({"n": np.array([3], np.int64)}, {"n": np.array([2], np.int64)}, FedOptState(), "adam", lr=0.1)
    assert w["n"].tolist() == [5] and w["n"].dtype == np.int64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer": "rmsprop"}, r"optimizer must be one of \['sgd', 'adam'\], got 'rmsprop'"),
        ({"lr": 0}, r"lr must be a finite number > 0, got 0"),
        ({"momentum": 1.0}, r"momentum must be a finite number in \[0, 1\), got 1.0"),
        ({"beta2": -0.1}, r"beta2 must be a finite number in \[0, 1\), got -0.1"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FedOptShareableGenerator(**kwargs)


def test_generator_steps_the_global_model_and_reports_the_step():
    generator = FedOptShareableGenerator(optimizer="sgd", lr=2.0)
    fl_ctx = FLContext()
    fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable({"w": np.array([1.0, 1.0])}, {}), private=True)
    aggregated = DXO(DataKind.WEIGHT_DIFF, data={"w": np.array([0.3, -0.4])}).to_shareable()
    model = generator.shareable_to_learnable(aggregated, fl_ctx)
    np.testing.assert_allclose(model["weights"]["w"], [1.6, 0.2])
    step = fl_ctx.get_prop(FlipProp.SERVER_STEP)
    assert step["update_norm"] == pytest.approx(0.5) and step["step_norm"] == pytest.approx(1.0)
