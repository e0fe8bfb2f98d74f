"""UncertaintyPlan: the run's uncertainty method, recorded with the model and checked at the start."""

from __future__ import annotations

import json

import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext

from flip.checks import check_choice, check_positive_int
from flip.constants import UNCERTAINTY_METHODS, ComponentId, RunFile, Uncertainty
from flip.nvflare.utils import run_dir
from flip.uncertainty import dropout_layers


class UncertaintyPlan(FLComponent):
    """Record the run's uncertainty method as the ``uncertainty.json`` artifact (what was stored and how to use
    it: see flip.uncertainty), and check what the method needs before any training: MC_DROPOUT needs dropout
    layers in ``models.get_model()``.

    Args:
        method: ``none``, ``ensemble``, ``mc_dropout`` or ``swag``.
        mc_dropout_samples: forward passes suggested for MC dropout (>= 2). Default 20.
    """

    def __init__(self, method: str = Uncertainty.NONE, mc_dropout_samples: int = 20):
        super().__init__()
        check_choice("method", method, UNCERTAINTY_METHODS)
        check_positive_int("mc_dropout_samples", mc_dropout_samples, minimum=2)
        self.method = method
        self.mc_dropout_samples = mc_dropout_samples
        self._checked = False

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            self._checked = False
            plan = {
                "method": self.method.upper(),
                "helper": {
                    Uncertainty.NONE: None,
                    Uncertainty.ENSEMBLE: f"flip.uncertainty.ensemble_predict (members in {RunFile.ENSEMBLE})",
                    Uncertainty.MC_DROPOUT: "flip.uncertainty.mc_dropout_predict",
                    Uncertainty.SWAG: f"flip.uncertainty.swag_predict ({RunFile.SWAG})",
                }[self.method],
            }
            if self.method == Uncertainty.MC_DROPOUT:
                plan["samples"] = self.mc_dropout_samples
            folder = run_dir(fl_ctx) / RunFile.ARTIFACTS_DIR
            folder.mkdir(parents=True, exist_ok=True)
            (folder / RunFile.UNCERTAINTY).write_text(json.dumps(plan, indent=2))
        elif event_type == EventType.START_WORKFLOW and not self._checked:
            self._checked = True
            if self.method == Uncertainty.MC_DROPOUT:
                persistor = fl_ctx.get_engine().get_component(ComponentId.PERSISTOR)
                model = getattr(persistor, "model", None)
                if isinstance(model, torch.nn.Module) and not dropout_layers(model):
                    self.system_panic("uncertainty MC_DROPOUT needs dropout layers in models.get_model()", fl_ctx)
