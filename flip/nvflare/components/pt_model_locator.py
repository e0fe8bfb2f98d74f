"""PTModelLocator: the server's final (and best, if one was selected) global model for cross-site validation."""

from __future__ import annotations

import torch
from nvflare.apis.dxo import DXO
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator

from flip.constants import ComponentId
from flip.nvflare.components.initial_pt_model_locator import check_exclude_vars, exclude_weights
from flip.nvflare.models import check_model_spec, check_weights_fit, resolve_model


class PTModelLocator(PTFileModelLocator):
    """Locate the global model(s) the run's persistor saved (component id ``persistor``).

    ``get_model_names`` lists the final global model and, only if a model selector saved one, the best global
    model. ``locate_model`` returns it as a WEIGHTS DXO.

    Args:
        exclude_vars: regex of parameter names to leave out of the located model, or None.
        model: a torch module, or ``{"path": "models.get_model"}``, to check the located weights against
            (every name must exist with the same shape); None skips the check.

    Raises:
        ValueError: exclude_vars is not a valid regular expression.
    """

    def __init__(self, exclude_vars=None, model=None):
        super().__init__(pt_persistor_id=ComponentId.PERSISTOR)
        self.exclude_vars = check_exclude_vars(exclude_vars)
        self.model = check_model_spec(model)
        self._model_module: torch.nn.Module | None = None

    def _initialize(self, fl_ctx: FLContext):
        try:
            super()._initialize(fl_ctx)
            self._model_module = resolve_model(self.model) if self.model is not None else None
        except (ValueError, TypeError) as exc:
            self.system_panic(f"{type(self).__name__}: {exc}", fl_ctx)

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        names = super().get_model_names(fl_ctx)
        final = self.model_persistor.global_model_file_name
        return sorted(names, key=lambda n: n != final)

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO | None:
        dxo = super().locate_model(model_name, fl_ctx)
        if dxo is None:
            return None
        dxo.data = exclude_weights(dxo.data, self.exclude_vars)
        if self._model_module is not None:
            check_weights_fit(dxo.data, self._model_module, f"located model {model_name!r}")
        self.log_info(fl_ctx, f"located {model_name}: {len(dxo.data)} tensors")
        return dxo
