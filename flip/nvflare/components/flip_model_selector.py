"""FlipModelSelector: NVFlare's in-time model selector on the sites' per-round tests of the global model."""

from __future__ import annotations

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.widgets.intime_model_selector import IntimeModelSelector

from flip.checks import check_bool, check_str
from flip.constants import FlipEvent, FlipProp
from flip.metrics import finite_number

#: the metric a job's --keep-best names by default
DEFAULT_BEST_METRIC = "accuracy"


class FlipModelSelector(IntimeModelSelector):
    """Select the best global model of a run on a named validation metric (the ``--keep-best`` job option).

    NVFlare's IntimeModelSelector reads a metric each site sends with its next training update; FLIP's sites test
    each new global model in the per-round tests (``model_test_after_each_round``) instead. This selector takes
    those answers (``flip.round_validated``: a site's metrics), weights each site's ``key_metric`` by its
    ``num_samples`` (1 when it sends none) and, once the round's tests are done (``flip.round_validation_done``),
    does what NVFlare's selector does before aggregation: if the mean is the best so far it fires
    ``GLOBAL_BEST_MODEL_AVAILABLE`` with the round's global model, and the persistor saves it as the best model
    (uploaded as ``best_global_model.pt``). A round whose sites sent no finite ``key_metric`` is skipped (logged).

    Args:
        key_metric: the validation metric to select on. Default ``accuracy``.
        negate_key_metric: True when lower is better (a loss). Default False.
    """

    def __init__(self, key_metric: str = DEFAULT_BEST_METRIC, negate_key_metric: bool = False):
        super().__init__(
            key_metric=check_str("key_metric", key_metric, max_length=128),
            negate_key_metric=check_bool("negate_key_metric", negate_key_metric),
        )
        self.best_round: int | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            self._startup()
            self.best_round = None
        elif event_type == AppEventType.ROUND_STARTED:
            self._reset_stats()
        elif event_type == FlipEvent.ROUND_VALIDATED:
            self._add(fl_ctx)
        elif event_type == FlipEvent.ROUND_VALIDATION_DONE:
            current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
            before = self.best_val_metric
            if not self._before_aggregate(fl_ctx):
                self.log_warning(
                    fl_ctx,
                    f"round {current + 1}: no site sent a finite {self.key_metric!r}: the round "
                    "is not a candidate for the best model",
                )
            elif self.best_val_metric != before:
                self.best_round = current + 1
                self.log_info(
                    fl_ctx,
                    f"round {current + 1}: best global model so far ({self.key_metric} "
                    f"{self.best_raw_val_metric:.4g}): saved as the best model",
                )

    def _add(self, fl_ctx: FLContext) -> None:
        metrics = fl_ctx.get_prop(FlipProp.ROUND_VALIDATION)
        site = fl_ctx.get_prop(AppConstants.DATA_CLIENT) or "?"
        value = finite_number(metrics.get(self.key_metric)) if isinstance(metrics, dict) else None
        if value is None:
            self.log_warning(fl_ctx, f"{site} sent no finite {self.key_metric!r} in its test of the global model")
            return
        weight = finite_number(metrics.get("num_samples", 1))
        weight = float(weight) if weight is not None and weight > 0 else 1.0
        raw = float(value)
        self.validation_metric_weighted_sum += (-raw if self.negate_key_metric else raw) * weight
        self.raw_validation_metric_weighted_sum += raw * weight
        self.validation_metric_sum_of_weights += weight
