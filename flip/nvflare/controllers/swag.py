"""SwagRound: after training, one SWAG round: sites send weight moments, the server builds the SWAG Gaussian."""

from __future__ import annotations

import numpy as np
import torch
from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from flip.checks import check_component_id, check_positive_int
from flip.constants import ComponentId, FlipEvent, FlipMeta, FlipTask, RunFile
from flip.errors import LookupFailed, NonFiniteModelError
from flip.methods import swag
from flip.methods.swag import DEVIATION, MEAN, negative_deviation
from flip.methods.weighted import check_update, l2_norm, norm_outliers
from flip.nvflare.controllers.base import FlipController
from flip.nvflare.utils import get_component, run_dir


class SwagRound(FlipController):
    """The SWAG round (the DLR demonstrator's SWAG_ROUND state), after the training rounds.

    Every site starts from the final global model, trains ``swag_epochs`` more times (each call of the user's
    ``train``), and returns its snapshots' mean as a difference to the global model and each weight's standard
    deviation around that mean (a COLLECTION ``{"mean", "deviation"}`` of two WEIGHT_DIFF DXOs, each through the
    site's privacy filter). The server pools them, weighted by samples, into the SWAG mean and diagonal variance by
    the law of total variance (flip.methods.swag: non-negative by construction, whatever the filter zeroed or
    clipped) and stores them as the run's ``swag.pt`` artifact (``{"mean": {...}, "variance": {...}, "num_samples",
    "sites"}``). Both parts pass the aggregator's checks (``num_samples`` at most
    flip.methods.weighted.MAX_NUM_SAMPLES, and a site whose parts' norm is more than NORM_RATIO_LIMIT times the
    median is excluded); a deviation with a negative entry is excluded; a mean or variance that is not finite ends
    the run in ERROR, unsaved.

    Args:
        swag_epochs: snapshots per site (>= 2). Default 3.
        min_clients: sites whose moments are needed (>= 1). Default 1.
        timeout: seconds (0: none). Default 0.
        wait_time_after_min_received: seconds to wait for the others once min_clients answered. Default 10.
    """

    def __init__(
        self,
        swag_epochs: int = 3,
        min_clients: int = 1,
        timeout: int = 0,
        wait_time_after_min_received: int = 10,
        persistor_id: str = ComponentId.PERSISTOR,
    ):
        super().__init__()
        self.swag_epochs = check_positive_int("swag_epochs", swag_epochs, minimum=2)
        self.min_clients = check_positive_int("min_clients", min_clients)
        self.timeout = check_positive_int("timeout", timeout, minimum=0)
        self.wait_time_after_min_received = check_positive_int(
            "wait_time_after_min_received", wait_time_after_min_received, minimum=0
        )
        self.persistor_id = check_component_id("persistor_id", persistor_id)
        self.persistor = None
        self._moments: dict[str, tuple[dict, dict, int]] = {}
        self._norms: dict[str, tuple[float, float]] = {}
        self._global: dict = {}

    def start_controller(self, fl_ctx: FLContext) -> None:
        try:
            self.persistor = get_component(fl_ctx, self.persistor_id, PTFileModelPersistor, "persistor")
        except LookupFailed as exc:
            self.system_panic(f"SwagRound: {exc}", fl_ctx)

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        learnable = self.persistor.get_model(self.persistor.global_model_file_name, fl_ctx)
        if learnable is None:
            self.system_panic("SwagRound: no global model was saved by the training rounds", fl_ctx)
            return
        self._global = learnable[ModelLearnableKey.WEIGHTS]
        self.fire_event(FlipEvent.SWAG_STARTED, fl_ctx)
        self.log_info(fl_ctx, f"SWAG round: {self.swag_epochs} snapshots per site from the final global model")
        data = DXO(data_kind=DataKind.WEIGHTS, data=self._global).to_shareable()
        data.set_header(FlipMeta.SWAG_EPOCHS, self.swag_epochs)
        task = Task(name=FlipTask.SWAG, data=data, timeout=self.timeout, result_received_cb=self._result_received)
        self.broadcast_and_wait(
            task=task,
            fl_ctx=fl_ctx,
            min_responses=self.min_clients,
            wait_time_after_min_received=self.wait_time_after_min_received,
            abort_signal=abort_signal,
        )
        if abort_signal.triggered:
            return
        self._exclude_outliers(fl_ctx)
        if len(self._moments) < self.min_clients:
            self.system_panic(
                f"SWAG round: {len(self._moments)} sites sent usable moments, {self.min_clients} needed", fl_ctx
            )
            return
        try:
            mean, variance = swag.aggregate(self._global, list(self._moments.values()))
        except NonFiniteModelError as exc:
            self.system_panic(f"SWAG round: {exc}: not saved", fl_ctx)
            return
        folder = run_dir(fl_ctx) / RunFile.ARTIFACTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "mean": {k: torch.as_tensor(v) for k, v in mean.items()},
                "variance": {k: torch.as_tensor(v) for k, v in variance.items()},
                "num_samples": sum(n for _, _, n in self._moments.values()),
                "sites": sorted(self._moments),
                "swag_epochs": self.swag_epochs,
            },
            folder / RunFile.SWAG,
        )
        total_var = float(sum(np.sum(v) for v in variance.values()))
        self.log_info(
            fl_ctx,
            f"SWAG from {len(self._moments)} sites: mean and variance of {len(mean)} tensors "
            f"(total variance {total_var:.3g}) saved as {RunFile.SWAG}",
        )

    def _result_received(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        site, result = client_task.client.name, client_task.result
        client_task.result = None
        if not isinstance(result, Shareable) or result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            self.log_error(fl_ctx, f"SWAG round: {site} sent no moments")
            return
        try:
            dxo = from_shareable(result)
            parts = dxo.data if dxo.data_kind == DataKind.COLLECTION else {}
            mean, deviation = parts[MEAN], parts[DEVIATION]
            n = dxo.get_meta_prop(FlipMeta.NUM_SAMPLES)
        except (ValueError, KeyError, TypeError):
            self.log_error(fl_ctx, f"SWAG round: {site}'s result is not a collection of {MEAN!r} and {DEVIATION!r}")
            return
        reason = (
            check_update(mean.data, self._global, n)
            or check_update(deviation.data, self._global, n)
            or negative_deviation(deviation.data)
        )
        if reason:
            self.log_warning(fl_ctx, f"SWAG round: the moments of {site} are excluded: {reason}")
            return
        self._moments[site] = (mean.data, deviation.data, int(n))
        self._norms[site] = (l2_norm(mean.data.values()), l2_norm(deviation.data.values()))

    def _exclude_outliers(self, fl_ctx: FLContext) -> None:
        """Exclude a site whose mean or deviation is far from the others' (the aggregator's relative rule)."""
        for part, label in ((0, MEAN), (1, DEVIATION)):
            outliers = norm_outliers({s: norms[part] for s, norms in self._norms.items() if s in self._moments})
            for site, reason in sorted(outliers.items()):
                del self._moments[site]
                self.log_warning(fl_ctx, f"SWAG round: the moments of {site} are excluded: {label}: {reason}")
