"""StagePercentilePrivacy: the percentile policy applied to each stage of a multi-stage update separately."""

from __future__ import annotations

from nvflare.apis.dxo import DXO, MetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flip.constants import FlipMeta
from flip.errors import PrivacyError
from flip.nvflare.components.percentile_privacy import PercentilePrivacy


class StagePercentilePrivacy(PercentilePrivacy):
    """The "largest percentile to share" policy, stage-aware: every stage gets its own threshold and step count.

    In a multi-stage job (e.g. a diffusion model trained in two stages) a stage's parameters change on their
    own scale and at their own number of steps; one threshold over everything would share too much of one
    stage and too little of the other. How the stage reaches the filter (set by RUN_TRAINER from the stage the
    controller put on the task):

    - a WEIGHT_DIFF DXO whose meta ``flip_stage_params`` maps each stage to its parameter names (and
      ``flip_stage_steps`` maps each stage to its step count; default ``NUM_STEPS_CURRENT_ROUND``): each group
      is filtered separately; a parameter in no group, or in two, is refused (the update is not sent);
    - a COLLECTION DXO of one WEIGHT_DIFF DXO per stage: each is filtered with its own meta;
    - a WEIGHT_DIFF DXO with meta ``flip_stage`` (one stage trained this round): filtered as a whole.

    Every stage's values are multiplied back by that stage's step count: no stage is left rescaled or unfiltered.
    Integer entries (counters such as BatchNorm's ``num_batches_tracked``) pass unchanged, as in
    :class:`PercentilePrivacy`, whose arguments and failure behaviour it shares.
    """

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        if self.off:
            return super().process_dxo(dxo, shareable, fl_ctx)
        if self.leave_to_site(dxo, fl_ctx):
            return dxo
        groups = dxo.get_meta_prop(FlipMeta.STAGE_PARAMS)
        integers = self.integer_entries(dxo)
        if not groups:
            stage = dxo.get_meta_prop(FlipMeta.STAGE) or "update"
            self.annotate(dxo, {stage: self.filter_dxo(dxo, fl_ctx, label=f"stage {stage}")}, integers)
            return dxo
        if not isinstance(groups, dict) or not isinstance(dxo.data, dict):
            raise PrivacyError(f"{FlipMeta.STAGE_PARAMS} must map stage names to parameter names")
        owner: dict[str, str] = {}
        for stage, names in groups.items():
            for name in names:
                if name in owner:
                    raise PrivacyError(f"parameter {name!r} is in two stages ({owner[name]!r} and {stage!r})")
                owner[name] = stage
        unassigned = [k for k in dxo.data if k not in owner]
        if unassigned:
            raise PrivacyError(f"parameter {unassigned[0]!r} belongs to no stage: the update is not shared")
        steps = dxo.get_meta_prop(FlipMeta.STAGE_STEPS) or {}
        default_steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 1)
        filtered: dict = {}
        stats = {}
        for stage, names in groups.items():
            part = DXO(
                data_kind=dxo.data_kind,
                data={n: dxo.data[n] for n in names if n in dxo.data},
                meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps.get(stage, default_steps)},
            )
            stats[stage] = self.filter_dxo(part, fl_ctx, label=f"stage {stage}")
            filtered.update(part.data)
        dxo.data = {k: filtered[k] for k in dxo.data}
        self.annotate(dxo, stats, integers)
        return dxo
