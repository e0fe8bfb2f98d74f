"""FedOptShareableGenerator: the global model takes a server optimizer step on the sites' averaged update."""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator

from flip.constants import FedOptimizer, FlipProp
from flip.methods.fedopt import FedOptState, check_fedopt_args, fedopt_step
from flip.methods.weighted import float_entries, l2_norm


class FedOptShareableGenerator(FullModelShareableGenerator):
    """Apply the aggregated WEIGHT_DIFF with a server optimizer instead of adding it (FedOpt).

    Args:
        optimizer: ``sgd`` (with ``momentum``) or ``adam``. Default ``sgd``.
        lr: server learning rate (> 0). Default 1.0 (with sgd and momentum 0: FedAvg).
        momentum: sgd momentum in [0, 1). Default 0.
        beta1, beta2, eps: Adam's moment decays in [0, 1) and epsilon (> 0). Defaults 0.9, 0.99, 1e-8.

    Raises:
        ValueError: naming the bad argument (e.g. an unknown optimizer).
    """

    def __init__(
        self,
        optimizer: str = FedOptimizer.SGD,
        lr: float = 1.0,
        momentum: float = 0.0,
        beta1: float = 0.9,
        beta2: float = 0.99,
        eps: float = 1e-8,
    ):
        super().__init__()
        check_fedopt_args(optimizer, lr, momentum, beta1, beta2, eps)
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.state = FedOptState()

    def shareable_to_learnable(self, shareable: Shareable, fl_ctx: FLContext) -> ModelLearnable:
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHT_DIFF:
            raise ValueError(f"FedOpt needs the aggregated WEIGHT_DIFF, got {dxo.data_kind}")
        base_model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        if not base_model:
            raise ValueError("FedOpt needs the current global model (AppConstants.GLOBAL_MODEL) to step from")
        old = base_model[ModelLearnableKey.WEIGHTS]
        new = fedopt_step(
            old, dxo.data or {}, self.state, self.optimizer, self.lr, self.momentum, self.beta1, self.beta2, self.eps
        )
        step = {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "update_norm": l2_norm(float_entries(dxo.data)),
            "step_norm": l2_norm(np.asarray(new[k], np.float64) - np.asarray(old[k], np.float64) for k in dxo.data),
        }
        fl_ctx.set_prop(FlipProp.SERVER_STEP, step, private=True, sticky=False)
        self.log_info(
            fl_ctx,
            f"server {self.optimizer} step {self.state.step}: averaged update norm "
            f"{step['update_norm']:.4g}, global model moved {step['step_norm']:.4g}",
        )
        base_model[ModelLearnableKey.WEIGHTS] = new
        base_model[ModelLearnableKey.META] = dxo.get_meta_props()
        return base_model
