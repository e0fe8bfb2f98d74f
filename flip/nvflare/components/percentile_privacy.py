"""PercentilePrivacy: the "largest percentile to share" policy as an NVFlare result filter."""

from __future__ import annotations

from functools import partial

from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flip.checks import check_bool, check_gamma, check_percentile
from flip.constants import FlipMeta
from flip.errors import PrivacyError
from flip.nvflare.result_policy import check_result
from flip.privacy.entries import merge_in_order, split_integer_entries
from flip.privacy.percentile import FilterStats, percentile_filter
from flip.run_metrics import PERCENTILE_FILTERS, describe_record

#: kinds the policy applies to: it is defined on model *differences*
FILTERABLE_KINDS = (DataKind.WEIGHT_DIFF,)


class PercentilePrivacy(DXOFilter):
    """Share only the largest changes of a site's model update, clipped.

    "Largest percentile to share" (Shokri & Shmatikov, Privacy-preserving deep learning, CCS '15): compute the
    ``percentile`` of abs(ΔW) over the whole update, set every entry whose abs value is not greater than it to
    0, and clip the rest to [-gamma, gamma]. Like NVFlare's built-in filter, when the DXO carries
    ``NUM_STEPS_CURRENT_ROUND`` the update is divided by it first and multiplied back after, so gamma bounds the
    per-step change. Unlike it, scalars are filtered too, entries exactly at the threshold are not shared, and
    the threshold is found by selection, not by sorting a copy of the update.

    What may leave at all is decided first, for every result (flip.nvflare.result_policy; a site's privacy scope
    applies this filter to every task's result):

    - for a training task (``train``, ``swag``, and any task that is not a known non-training task, or none):
      a WEIGHT_DIFF DXO is filtered; a COLLECTION whose leaves are all WEIGHT_DIFF (SWAG's moments) has each leaf
      filtered; anything else (METRICS, WEIGHTS, custom kinds, a Shareable that is not a DXO, a DXO with extra
      entries, arrays in headers or meta) is refused;
    - for a non-training task (``validate``, ``evaluate``, ``init_training``): a METRICS DXO of named finite
      numbers, or an empty reply, passes unchanged; a model (WEIGHTS, WEIGHT_DIFF, arrays) is refused;
    - an error reply passes as it is if it carries no data.

    Integer entries of an update (BatchNorm's ``num_batches_tracked``, which FLIP apps send with every
    ``state_dict`` entry) are counters, not weights: they pass unchanged, and the annotation on the update says
    how many (``integer_entries``). The percentile is taken over the floating-point entries only.

    Fails closed: a refused result, a non-finite update or anything it cannot filter raises a PrivacyError naming
    the task, the kind and the reason, and NVFlare then sends an error instead of the result. Nothing passes by
    default; ``off=True`` is the only pass-through.

    A site's own policy (its ``local/privacy.json``, applied before the job's filters) marks its records
    ``site_policy``. When a job's filter meets an update the site policy's percentile filter already filtered, it
    says so in the site's run log ("site policy applies PercentilePrivacy(10, 0.01); the job's
    PercentilePrivacy(10, 0.01) also applies") and filters it again; with ``defer_to_site`` it leaves that update
    to the site's policy instead (and still filters at a site without one).

    Args:
        percentile: in [0, 100]. Default 10 (share about 90% of the entries).
        gamma: > 0, the clip bound per step. Default 0.01.
        data_kinds: kinds to filter; only ``["WEIGHT_DIFF"]`` is allowed (the default).
        off: pass every update unchanged (a warning is logged for every update).
        site_policy: this filter is a site's own policy (privacy.json), not a job's. Default False.
        defer_to_site: (a job's filter) leave an update the site's policy already filtered with a percentile
            filter to it. Default False: both apply.

    Raises:
        ValueError: an argument is out of range (the message names it and what is allowed).
    """

    #: written into job configs even at their defaults, so every job shows its privacy setting
    _always_serialize_args = ("percentile", "gamma")

    def __init__(
        self,
        percentile=10,
        gamma=0.01,
        data_kinds: list[str] | None = None,
        off: bool = False,
        site_policy: bool = False,
        defer_to_site: bool = False,
    ):
        check_percentile(percentile)
        check_gamma(gamma)
        if data_kinds is not None:
            if not isinstance(data_kinds, list) or not data_kinds or not all(k in FILTERABLE_KINDS for k in data_kinds):
                raise ValueError(
                    f"data_kinds must be a non-empty list of {[k.value for k in FILTERABLE_KINDS]} (the policy applies to model "
                    f"differences only), got {data_kinds!r}"
                )
        check_bool("off", off)
        check_bool("site_policy", site_policy)
        check_bool("defer_to_site", defer_to_site)
        if site_policy and defer_to_site:
            raise ValueError("site_policy and defer_to_site cannot both be True: a site's policy defers to no one")
        super().__init__(supported_data_kinds=list(FILTERABLE_KINDS), data_kinds_to_filter=data_kinds)
        self.percentile = percentile
        self.gamma = gamma
        self.off = off
        self.site_policy = site_policy
        self.defer_to_site = defer_to_site

    def describe(self) -> str:
        """``PercentilePrivacy(10, 0.01)``: the filter and its settings, as the run log and the report name it."""
        return describe_record({"filter": type(self).__name__, "percentile": self.percentile, "gamma": self.gamma})

    def leave_to_site(self, dxo: DXO, fl_ctx: FLContext) -> bool:
        """Before filtering: if the site's policy already applied a percentile filter to this update, log it (once
        per update) and return True when this job filter leaves the update to it (``defer_to_site``)."""
        if self.site_policy:
            return False
        applied = dxo.get_meta_prop(FlipMeta.PRIVACY)
        site = (
            next(
                (
                    r
                    for r in applied
                    if isinstance(r, dict) and r.get("site_policy") and r.get("filter") in PERCENTILE_FILTERS
                ),
                None,
            )
            if isinstance(applied, list)
            else None
        )
        if site is None:
            return False
        if self.defer_to_site:
            self.log_info(
                fl_ctx,
                f"site policy applies {describe_record(site)}; the job's {self.describe()} leaves "
                "this update to it (defer_to_site)",
            )
            annotate(
                dxo,
                {"filter": type(self).__name__, "percentile": self.percentile, "gamma": self.gamma, "deferred": True},
            )
            return True
        self.log_warning(
            fl_ctx,
            f"site policy applies {describe_record(site)}; the job's {self.describe()} also "
            "applies: this update is filtered twice (the job option defer_to_site leaves it to "
            "the site)",
        )
        return False

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        # Decide first what may leave at all (refused results raise); only training updates reach the filter.
        note = partial(self.log_warning, fl_ctx)  # told of each non-finite score dropped
        if not self.off and not check_result(shareable, fl_ctx, type(self).__name__, note):
            return shareable
        return super().process(shareable, fl_ctx)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        if self.off:
            self.log_warning(fl_ctx, f"privacy filter is OFF: {dxo.data_kind} update shared unfiltered")
            annotate(dxo, {"filter": type(self).__name__, "off": True})
            return dxo
        if self.leave_to_site(dxo, fl_ctx):
            return dxo
        integers = self.integer_entries(dxo)
        stats = self.filter_dxo(dxo, fl_ctx)
        self.annotate(dxo, {"update": stats}, integers)
        return dxo

    def integer_entries(self, dxo: DXO) -> int:
        """How many integer entries the update holds (they pass the filter unchanged)."""
        return len(split_integer_entries(dxo.data)[1]) if isinstance(dxo.data, dict) else 0

    def annotate(self, dxo: DXO, parts: dict[str, FilterStats], integer_entries: int = 0) -> None:
        """Record on the update what was applied (settings and shared/clipped fractions: never values), and how
        many integer entries passed unchanged (only when there were some)."""
        record = {
            "filter": type(self).__name__,
            "percentile": self.percentile,
            "gamma": self.gamma,
            "parts": {
                k: {"shared": round(v.fraction_shared, 4), "clipped": round(v.fraction_clipped, 4)}
                for k, v in parts.items()
            },
        }
        if self.site_policy:
            record["site_policy"] = True
        if integer_entries:
            record["integer_entries"] = integer_entries
        annotate(dxo, record)

    def filter_dxo(self, dxo: DXO, fl_ctx: FLContext, label: str = "update") -> FilterStats:
        """Filter one WEIGHT_DIFF DXO in place (its floating-point entries; integer entries pass unchanged), log one
        line of counts, return them."""
        if not isinstance(dxo.data, dict):
            raise PrivacyError(f"{label}: a WEIGHT_DIFF DXO must hold a dict of arrays, got {type(dxo.data).__name__}")
        num_steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 1)
        floats, integers = split_integer_entries(dxo.data)
        filtered, stats = percentile_filter(floats, self.percentile, self.gamma, num_steps=num_steps or 1, inplace=True)
        dxo.data = merge_in_order(dxo.data, filtered, integers)
        passed = f", {len(integers)} integer entries unchanged" if integers else ""
        self.log_info(
            fl_ctx,
            f"{label}: percentile {self.percentile} threshold {stats.threshold:.3g}, shared "
            f"{stats.fraction_shared:.1%} of {stats.total} values, clipped {stats.fraction_clipped:.1%} "
            f"(gamma {self.gamma}, steps {num_steps}){passed}",
        )
        return stats


def annotate(dxo: DXO, record: dict) -> None:
    """Append what a privacy filter did to the update's ``flip_privacy`` meta (a list, in the order applied)."""
    applied = dxo.get_meta_prop(FlipMeta.PRIVACY)
    dxo.set_meta_prop(FlipMeta.PRIVACY, (applied if isinstance(applied, list) else []) + [record])
