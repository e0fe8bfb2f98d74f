"""SampleWeightedAggregator: FedAvg weighted by samples, after every update passed the acceptance checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.aggregator import Aggregator
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants

from flip.checks import check_bool, check_number, check_positive, check_positive_int, optional
from flip.constants import FlipMeta, FlipProp, RunFile
from flip.errors import AggregationFailed, NonFiniteModelError
from flip.methods.weighted import (
    MAX_NUM_SAMPLES,
    NORM_RATIO_LIMIT,
    StreamingWeightedMean,
    as_tensor,
    check_finite,
    check_update,
    float_entries,
    l2_norm,
    norm_outliers,
)
from flip.nvflare.utils import peer_name, run_dir


class LocalModelStore:
    """Sites' local models on the server's disk (``<run>/local_models/round_<n>/<site>.pt``, only when kept), and
    the ensemble."""

    def __init__(self, folder: Path):
        self.root = folder / RunFile.LOCAL_MODELS_DIR
        self.artifacts = folder / RunFile.ARTIFACTS_DIR

    def save(self, round_num: int, site: str, weights: dict[str, Any]) -> Path:
        path = self.root / f"round_{round_num + 1}" / f"{site}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()}, path)
        return path

    def delete(self, round_num: int, site: str) -> None:
        (self.root / f"round_{round_num + 1}" / f"{site}.pt").unlink(missing_ok=True)

    def write_ensemble(self, members: dict[str, dict[str, Any]]) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / RunFile.ENSEMBLE
        torch.save(
            {site: {k: torch.as_tensor(np.asarray(v)) for k, v in w.items()} for site, w in members.items()}, path
        )
        return path


def check_local_finite(base: dict[str, Any], diff: dict[str, Any], what: str) -> None:
    """Raise NonFiniteModelError naming the first entry where the model a site started from plus its update is not
    finite in the model's dtype (as :func:`reconstruct` then :func:`check_finite`, one entry at a time: no copy of the
    whole model is made)."""
    with np.errstate(over="ignore", invalid="ignore"):
        for name, d in diff.items():
            start = as_tensor(base[name])
            if not start.is_floating_point():
                continue  # an integer entry's range is checked with the update (check_update)
            step = as_tensor(d)
            if step.dtype == start.dtype:
                local = start + step
            else:
                local = torch.from_numpy((np.asarray(base[name]) + np.asarray(d)).astype(np.asarray(base[name]).dtype))
            if not bool(torch.isfinite(local).all()):
                raise NonFiniteModelError(f"{what}: entry {name!r} holds NaN or Inf (or a value beyond its dtype)")
    check_finite({name: value for name, value in base.items() if name not in diff}, what)


def reconstruct(base: dict[str, Any], diff: dict[str, Any]) -> dict[str, np.ndarray]:
    """A site's local model: the model it started from plus its (filtered) update (an entry that overflows its
    dtype becomes Inf: check the result with check_finite)."""
    local = {k: np.asarray(v) for k, v in base.items()}
    with np.errstate(over="ignore", invalid="ignore"):
        for name, d in diff.items():
            local[name] = (local[name] + np.asarray(d)).astype(local[name].dtype)
    return local


class SampleWeightedAggregator(Aggregator):
    """Average the round's WEIGHT_DIFF updates weighted by each site's number of samples (FedAvg).

    An update is excluded, with its reason logged and written to metrics.json, when it is for another round,
    is the site's second update in the round, is not a WEIGHT_DIFF, has NaN/Inf, parameters the global model
    lacks or shapes or dtypes it does not have, ``num_samples`` <= 0 or > ``max_num_samples``, an L2 norm above
    ``max_update_norm``, or makes the site's local model (its starting model plus the update) overflow. An integer
    entry (a counter such as BatchNorm's ``num_batches_tracked``, sent by FLIP apps) is taken where the global
    entry is an integer, averaged and rounded; norms are taken over the floating-point entries. Once every
    update of the round is in, an update whose L2 norm is more than ``norm_ratio_limit`` times the median of the
    round's update norms is excluded too (see flip.methods.weighted.norm_outliers for what that guarantees:
    if more than half of the updates have a norm <= B, every update averaged has a norm <= norm_ratio_limit·B; with
    two sites it excludes nothing, so give ``max_update_norm`` where one site of two must be bounded). The round
    completes if at least ``min_accepted`` updates remain; otherwise the run ends in ERROR naming the reasons. An
    average that is not finite in its dtype fails the round (it is never sent or saved).

    An accepted update is folded into the round's running weighted mean as it arrives (flip.methods.weighted.
    StreamingWeightedMean: float32 for float32 models, within 1e-6 of float64 sums) and then dropped, unless the
    round must keep it: FedDC, the ensemble, or three or more sites with the norm rule on (an update may still be
    excluded, and the mean is then taken again without it). Sites' local models (the model they started from plus
    their update) are built only when an option needs them, and written to the server's disk only then: with
    ``delete_local_models_after_aggregation=False`` (DLR's option off) every round's are kept as
    ``local_models/round_<n>/<site>.pt`` (the latest round's are uploaded with the run); with ``ensemble``, the
    last round's become the run's ``ensemble.pt`` artifact.

    Args:
        min_accepted: updates needed to aggregate (>= 1). Default 1.
        delete_local_models_after_aggregation: no local model outlives its round's aggregation (none is written to
            disk). Default True, DLR's; False keeps every round's local models on the server's disk.
        ensemble: keep every site's last local model as the ``ensemble.pt`` artifact.
        max_num_samples: the largest ``num_samples`` (a site's weight) an update may claim (>= 1). Default 10
            million.
        max_update_norm: an absolute cap on an update's L2 norm (> 0), or None (default) for none.
        norm_ratio_limit: exclude an update whose norm is more than this many times the round's median update norm
            (>= 1), or None to turn the rule off. Default 10.
    """

    def __init__(
        self,
        min_accepted: int = 1,
        delete_local_models_after_aggregation: bool = True,
        ensemble: bool = False,
        max_num_samples: int = MAX_NUM_SAMPLES,
        max_update_norm: float | None = None,
        norm_ratio_limit: float | None = NORM_RATIO_LIMIT,
    ):
        super().__init__()
        check_positive_int("min_accepted", min_accepted)
        self.max_num_samples = check_positive_int("max_num_samples", max_num_samples)
        self.max_update_norm = optional(check_positive, "max_update_norm", max_update_norm)
        self.norm_ratio_limit = optional(check_number, "norm_ratio_limit", norm_ratio_limit, 1)
        check_bool("delete_local_models_after_aggregation", delete_local_models_after_aggregation)
        check_bool("ensemble", ensemble)
        self.min_accepted = min_accepted
        self.delete_local_models_after_aggregation = delete_local_models_after_aggregation
        self.ensemble = ensemble
        #: the round's accepted updates by site: (the update, or None once folded into the mean and dropped; samples)
        self.accepted: dict[str, tuple[dict[str, Any] | None, int]] = {}
        self.excluded: dict[str, str] = {}
        self.mean = StreamingWeightedMean()  # the accepted updates' weighted mean, taken as they arrive
        self._hold: bool | None = None  # whether the round's updates are kept until it closes (decided per round)
        self.norms: dict[str, float] = {}  # the accepted updates' L2 norms, for the round's relative rule
        #: FedDC: each site's starting model this round (None: everyone started from the global model)
        self.bases: dict[str, dict[str, Any]] | None = None

    def reset(self, fl_ctx: FLContext) -> None:
        self.accepted, self.excluded, self.norms = {}, {}, {}
        self.mean, self._hold = StreamingWeightedMean(), None

    def _holds_updates(self, fl_ctx: FLContext) -> bool:
        """Whether this round's updates must be kept until it closes: FedDC (it reads them), the ensemble (the last
        round's local models), or when the norm rule may still exclude an update that was already averaged (it
        cannot with at most two sites and a ratio limit >= 2: see norm_outliers). Otherwise each update is folded
        into the mean on arrival and dropped, as stock NVFlare's FedAvg does."""
        if self.bases is not None or self.ensemble:
            return True
        if self.norm_ratio_limit is None:
            return False
        try:
            sites = len(fl_ctx.get_engine().get_clients())
        except (AttributeError, TypeError):
            return True  # unknown: keep them
        return not (1 <= sites <= 2 and self.norm_ratio_limit >= 2)

    def _check(self, shareable: Shareable, site: str, current: int, base: dict) -> tuple[DXO | None, str | None]:
        """The update's DXO, and why it must be excluded (None if it may be aggregated)."""
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return None, f"the site reported {shareable.get_return_code()}"
        contribution = shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND)
        if contribution != current:
            return None, (
                f"it is for round {contribution + 1 if isinstance(contribution, int) else contribution}, "
                f"this is round {current + 1}"
            )
        if site in self.accepted:
            return None, f"{site} already sent its update for round {current + 1}"
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return None, "it is not a DXO"
        if dxo.data_kind != DataKind.WEIGHT_DIFF:
            return dxo, f"it is {getattr(dxo.data_kind, 'value', dxo.data_kind)}, expected WEIGHT_DIFF"
        return dxo, check_update(dxo.data, base, dxo.get_meta_prop(FlipMeta.NUM_SAMPLES), self.max_num_samples)

    def _base(self, fl_ctx: FLContext, site: str) -> dict[str, Any]:
        if self.bases and site in self.bases:
            return self.bases[site]
        model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        return model[ModelLearnableKey.WEIGHTS] if model else {}

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        site = peer_name(fl_ctx)
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        base = self._base(fl_ctx, site)
        dxo, reason = self._check(shareable, site, current, base)
        norm = None
        if not reason:
            norm = l2_norm(float_entries(dxo.data))
            if self.max_update_norm is not None and not norm <= self.max_update_norm:
                reason = f"its update norm {norm:.3g} is more than max_update_norm ({self.max_update_norm:g})"
        if not reason:
            try:
                check_local_finite(base, dxo.data, "its local model (the model it started from plus its update)")
            except NonFiniteModelError as exc:
                reason = str(exc)
        if reason:
            self.excluded.setdefault(site, reason)
            self.log_warning(fl_ctx, f"round {current + 1}: the update of {site} is excluded: {reason}")
            return False
        if self._hold is None:
            self._hold = self._holds_updates(fl_ctx)
        samples = int(dxo.get_meta_prop(FlipMeta.NUM_SAMPLES))
        self.mean.add(dxo.data, samples)
        self.accepted[site] = (dxo.data if self._hold else None, samples)
        self.norms[site] = norm
        if not self.delete_local_models_after_aggregation:  # the only option that needs them on disk
            LocalModelStore(run_dir(fl_ctx)).save(current, site, reconstruct(base, dxo.data))
        return True

    def _exclude_outliers(self, fl_ctx: FLContext) -> None:
        """Exclude the accepted updates whose norm is far above the round's median (all updates are in)."""
        if self.norm_ratio_limit is None:
            return
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        outliers = norm_outliers({s: self.norms[s] for s in self.accepted if s in self.norms}, self.norm_ratio_limit)
        for site, reason in sorted(outliers.items()):
            del self.accepted[site]
            self.excluded[site] = reason
            LocalModelStore(run_dir(fl_ctx)).delete(current, site)
            self.log_warning(fl_ctx, f"round {current + 1}: the update of {site} is excluded: {reason}")
        if outliers:
            self._average_again(current)

    def _average_again(self, current: int) -> None:
        """The mean of the remaining updates, taken again from the kept updates (in their order of arrival)."""
        if any(update is None for update, _ in self.accepted.values()):  # cannot happen: see _holds_updates
            raise AggregationFailed(f"round {current + 1}: an update was excluded after it was averaged and dropped")
        self.mean = StreamingWeightedMean()
        for update, samples in self.accepted.values():
            self.mean.add(update, samples)

    def check_enough(self, fl_ctx: FLContext) -> None:
        """Close the round's acceptance: exclude norm outliers, then raise AggregationFailed (naming why updates
        were excluded) if fewer than min_accepted remain."""
        self._exclude_outliers(fl_ctx)
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        report = {"accepted": sorted(self.accepted), "excluded": dict(self.excluded)}
        fl_ctx.set_prop(FlipProp.AGGREGATION_REPORT, report, private=True, sticky=False)
        if len(self.accepted) < self.min_accepted:
            why = "; ".join(f"{site}: {reason}" for site, reason in sorted(self.excluded.items())) or "no update"
            raise AggregationFailed(
                f"round {current + 1}: {len(self.accepted)} update(s) accepted, {self.min_accepted} needed ({why})"
            )

    def finish_round(self, fl_ctx: FLContext, members: dict[str, dict[str, Any]] | None = None) -> None:
        """After aggregating: the ensemble artifact on the last round (from memory: no local model file is needed)."""
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        store = LocalModelStore(run_dir(fl_ctx))
        num_rounds = fl_ctx.get_prop(AppConstants.NUM_ROUNDS)
        start = fl_ctx.get_prop(AppConstants.START_ROUND, 0) or 0
        if self.ensemble and num_rounds and current == start + num_rounds - 1:
            if members is None:
                members = {s: reconstruct(self._base(fl_ctx, s), d) for s, (d, _) in self.accepted.items()}
            store.write_ensemble(members)
            self.log_info(fl_ctx, f"ensemble of {len(members)} sites' last local models kept: {RunFile.ENSEMBLE}")

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        self.check_enough(fl_ctx)
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        try:
            mean = self.mean.result()
        except NonFiniteModelError as exc:
            raise AggregationFailed(f"round {current + 1}: {exc}: the round's average is refused") from exc
        total = sum(n for _, n in self.accepted.values())
        self.log_info(fl_ctx, f"round {current + 1}: averaged {len(self.accepted)} updates over {total} samples")
        self.finish_round(fl_ctx)
        return DXO(data_kind=DataKind.WEIGHT_DIFF, data=mean, meta={FlipMeta.NUM_SAMPLES: total}).to_shareable()
