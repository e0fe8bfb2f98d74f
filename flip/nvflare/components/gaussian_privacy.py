"""GaussianPrivacy: client-level (ε, δ) differential privacy for a site's updates, with a budget that fails closed."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flip.checks import check_int, check_number, check_positive, optional
from flip.constants import FlipMeta
from flip.errors import PrivacyError
from flip.files import write_json_atomic
from flip.nvflare.components.percentile_privacy import annotate
from flip.nvflare.result_policy import check_result
from flip.nvflare.utils import run_dir
from flip.privacy.dp_sgd import CLIENT_LEVEL
from flip.privacy.entries import split_integer_entries
from flip.privacy.gaussian import calibrate_noise, check_noise_multiplier, clip_and_noise, epsilon_after, make_rng
from flip.privacy.release import release_meta, release_metrics

BUDGET_FILE = "flip_dp_budget.json"
#: how the records name the accountant (dp-accounting's RDP accountant, flip.privacy.gaussian)
ACCOUNTANT = "rdp"


class GaussianPrivacy(DXOFilter):
    """Clip each update to L2 norm ``clip_norm`` and add Gaussian noise: client-level (ε, δ)-DP per site.

    The site's whole update (every round's release) is clipped to ``clip_norm`` and gets N(0, σ²) noise per
    entry with σ = noise_multiplier × clip_norm, drawn from a generator seeded by the OS's cryptographic
    randomness. Give either ``noise_multiplier``, or a target ``epsilon`` with the planned ``rounds`` (the noise
    is then calibrated so that ``rounds`` releases spend exactly ``epsilon`` at ``delta``).

    Accounting (dp-accounting's RDP accountant, see flip.privacy.gaussian): after every round the ε spent so far
    at ``delta`` is logged and recorded on the update (the server writes it to metrics.json as
    ``dp_epsilon/client-level/delta-<δ>/rdp``).
    The count of rounds released is kept in the site's run folder. When the next release would exceed
    ``max_epsilon`` (default: ``epsilon``), the filter refuses: nothing is sent, the run cannot take more from
    this site (the server's workflow sees the budget coming and stops training cleanly first).

    What may leave at all is decided first, by the rule PercentilePrivacy applies (flip.nvflare.result_policy):
    for a training task only WEIGHT_DIFF updates (or a COLLECTION of them) leave, noised; a non-training task's
    METRICS (scores, not noised) or an empty reply pass unchanged; everything else is refused.

    Nothing leaves around it: the numbers a training result carries beside the update (its ``flip_metrics``
    header: the trainer's loss, accuracy, sample count...; its DXO meta) go through flip.privacy.release: metrics
    computed on the site's data are withheld, ``num_samples`` (header and meta) becomes ``public_sample_weight``
    and the step count is dropped; ``update_norm`` is measured after every filter (ClientEventHandler). Each
    record names the guarantee: ``level`` ``client``, ε, δ and the ``accountant``.

    Integer entries (BatchNorm's ``num_batches_tracked``, which FLIP apps send with every ``state_dict`` entry)
    cannot be noised: they are withheld (not sent; the server keeps its own value, and the annotation counts them
    as ``integer_entries_withheld``), so everything that leaves is inside the guarantee.

    Fails closed: anything but WEIGHT_DIFF for a training task (e.g. full WEIGHTS or metrics), NaN/Inf, or an
    exhausted budget raises; the update is never returned unfiltered. Place it after PercentilePrivacy (noise
    last); it composes with a site's privacy policy the same way (a job cannot remove a site-scope filter).

    Args:
        clip_norm: L2 bound of an update (> 0). Default 1.0.
        noise_multiplier: σ / clip_norm (> 0), or None to calibrate from ``epsilon`` and ``rounds``.
        epsilon: target ε for ``rounds`` releases (> 0), or None.
        delta: δ (0 < δ < 1). Default 1e-5.
        rounds: planned releases (>= 1), needed with ``epsilon``.
        max_epsilon: budget (> 0); default ``epsilon`` (None with ``noise_multiplier``: no budget stop).
        seed: fixed seed, for tests only (a warning is logged): production noise must be unpredictable.
        public_sample_weight: the weight (>= 1) sent as the site's sample count. Default 1: every site weighs the
            same (a count of the site's records would be outside the guarantee).
        clipping_norm: FLIP's name for ``clip_norm`` (its LocalDifferentialPrivacy's L2 bound of an update); give
            one of the two, or both equal.

    Raises:
        ValueError: naming a bad or missing argument, a noise multiplier whose ε is not finite (e.g. 1e-300), or
            an ``epsilon`` that no noise multiplier reaches over ``rounds`` at ``delta`` (with the range that can).
    """

    def __init__(
        self,
        clip_norm: float = 1.0,
        noise_multiplier: float | None = None,
        epsilon: float | None = None,
        delta: float = 1e-5,
        rounds: int | None = None,
        max_epsilon: float | None = None,
        seed: int | None = None,
        public_sample_weight: int = 1,
        clipping_norm: float | None = None,
    ):
        super().__init__(supported_data_kinds=None, data_kinds_to_filter=None)
        if clipping_norm is not None and clipping_norm != clip_norm and clip_norm != 1.0:
            raise ValueError(
                f"clip_norm {clip_norm!r} and FLIP's clipping_norm {clipping_norm!r} name one setting: give "
                "one, or both equal"
            )
        self.clip_norm = check_positive(
            "clip_norm" if clipping_norm is None else "clipping_norm",
            clip_norm if clipping_norm is None else clipping_norm,
        )
        self.public_sample_weight = check_int("public_sample_weight", public_sample_weight, 1)
        self.noise_multiplier = optional(check_positive, "noise_multiplier", noise_multiplier)
        self.epsilon = optional(check_positive, "epsilon", epsilon)
        self.delta = check_number("delta", delta, 0, 1, low_open=True, high_open=True)
        self.rounds = optional(check_int, "rounds", rounds, 1)
        self.max_epsilon = optional(check_positive, "max_epsilon", max_epsilon)
        self.seed = optional(check_int, "seed", seed)
        if (noise_multiplier is None) == (epsilon is None):
            raise ValueError("give exactly one of noise_multiplier or epsilon (with rounds)")
        if epsilon is not None and rounds is None:
            raise ValueError("epsilon needs rounds: the number of rounds the noise is calibrated for")
        self.sigma = noise_multiplier if noise_multiplier is not None else calibrate_noise(epsilon, delta, rounds)
        check_noise_multiplier(self.sigma, delta)  # ε must be finite: it goes to metrics.json and the hub
        self.budget = max_epsilon if max_epsilon is not None else epsilon
        self._rng = make_rng(seed)

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        # the same rule as PercentilePrivacy decides what may leave at all; only training updates get noise
        note = partial(self.log_warning, fl_ctx)  # told of each non-finite score dropped
        if not check_result(shareable, fl_ctx, type(self).__name__, note):
            return shareable
        if self.seed is not None:
            self.log_warning(fl_ctx, "GaussianPrivacy has a fixed seed: its noise is predictable (tests only)")
        result = super().process(shareable, fl_ctx)
        self.release(result, fl_ctx)
        return result

    def release(self, shareable: Shareable, fl_ctx: FLContext) -> None:
        """Apply flip.privacy.release to the numbers beside the update: the metrics header and the DXO meta."""
        metrics, withheld = release_metrics(shareable.get_header(FlipMeta.METRICS), self.public_sample_weight, None)
        shareable.set_header(FlipMeta.METRICS, metrics)
        dxo = from_shareable(shareable)
        meta, dropped = release_meta(dxo.meta, self.public_sample_weight, keep_steps=False)
        dxo.meta.clear()
        dxo.meta.update(meta)
        dxo.update_shareable(shareable)
        if withheld or dropped:
            self.log_info(
                fl_ctx,
                "under client-level DP, not sent beside the update: "
                + ", ".join(withheld + [f"meta {k}" for k in dropped]),
            )

    def _state_file(self, fl_ctx: FLContext) -> Path:
        return run_dir(fl_ctx) / BUDGET_FILE

    def released(self, fl_ctx: FLContext) -> int:
        """How many updates this site released in this run so far (kept on disk: survives restarts)."""
        path = self._state_file(fl_ctx)
        return int(json.loads(path.read_text())["released"]) if path.is_file() else 0

    def _record(self, fl_ctx: FLContext, released: int) -> None:
        write_json_atomic(
            self._state_file(fl_ctx), {"released": released, "noise_multiplier": self.sigma, "delta": self.delta}
        )

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        if dxo.data_kind != DataKind.WEIGHT_DIFF:
            kind = getattr(dxo.data_kind, "value", dxo.data_kind)
            raise PrivacyError(f"GaussianPrivacy refuses a {kind} result: only WEIGHT_DIFF updates can be privatised")
        if not isinstance(dxo.data, dict):
            raise PrivacyError("a WEIGHT_DIFF DXO must hold a dict of arrays")
        released = self.released(fl_ctx)
        spent_next = epsilon_after(released + 1, self.sigma, self.delta)
        if self.budget is not None and spent_next > self.budget:
            raise PrivacyError(
                f"privacy budget exhausted: releasing update {released + 1} would spend ε={spent_next:.3g} > "
                f"max_epsilon {self.budget:g} (δ={self.delta:g}); nothing is sent"
            )
        floats, integers = split_integer_entries(dxo.data, counters_only=False)
        if integers:
            self.log_info(
                fl_ctx,
                f"{len(integers)} integer entries (e.g. {next(iter(integers))!r}) withheld: noise "
                "cannot be added to them",
            )
        data, stats = clip_and_noise(floats, self.clip_norm, self.sigma, self._rng)
        dxo.data = data
        self._record(fl_ctx, released + 1)
        following = epsilon_after(released + 2, self.sigma, self.delta)
        record = {
            "filter": type(self).__name__,
            "level": CLIENT_LEVEL,
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.sigma,
            "delta": self.delta,
            "accountant": ACCOUNTANT,
            "epsilon": round(spent_next, 6),
            "next_epsilon": round(following, 6),
            "max_epsilon": self.budget,
            "released": released + 1,
        }
        if integers:
            record["integer_entries_withheld"] = len(integers)
        annotate(dxo, record)
        self.log_info(
            fl_ctx,
            f"update {released + 1}: norm {stats.norm:.3g} clipped to {self.clip_norm:g} "
            f"(scale {stats.scale:.3g}), noise σ={stats.noise_std:.3g}; ε spent {spent_next:.3g} "
            f"at δ={self.delta:g}" + (f" of {self.budget:g}" if self.budget else ""),
        )
        return dxo
