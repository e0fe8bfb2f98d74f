"""Which numbers may travel with a training result under differential privacy: the one rule, in one place.

A differentially private update says little about one patient (record-level) or one hospital (client-level); a
number sent beside it and computed on the same data (the trainer's loss, its accuracy on local images, the exact
number of records, the update's norm before clipping) says what it says, outside the guarantee. So under DP a
training result carries only:

- ``update_norm``: the L2 norm of the update *as it leaves* (after every filter): a function of what is sent
  anyway (post-processing, no privacy cost);
- ``received_checksum``: a fingerprint of the model the server sent (the server's own data);
- ``num_samples``: a public weight instead of the count: the site policy's ``public_sample_weight``, else for
  DP-SGD the batches per epoch × batch size (what the sampling rate, a public part of the mechanism, already
  says), for client-level DP 1 (every site weighs the same);

and every other metric is withheld (named in the site's log, never sent). In the update's DXO meta the sample
count becomes the same public weight; under client-level DP the step count (a count of the site's data) is
dropped; meta keys not listed in :data:`RELEASED_META` are dropped. The validation and evaluation scores a site
returns for a *model the server sent* are not training results: see the README for what they reveal.

No NVFlare import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flip.constants import FlipMeta
from flip.metrics import NUM_SAMPLES

#: metrics that may travel with a training result under DP (besides num_samples, replaced by a public weight)
RELEASED_METRICS = ("update_norm", "received_checksum")
#: NVFlare's key of the optimizer steps of a round in DXO meta (nvflare.apis.dxo.MetaKey.NUM_STEPS_CURRENT_ROUND)
NUM_STEPS_META = "NUM_STEPS_CURRENT_ROUND"
#: flip's DXO meta keys that may stay on an update under DP (structure and privacy records: no counts of data)
RELEASED_META = (
    FlipMeta.PRIVACY,
    FlipMeta.STAGE,
    FlipMeta.STAGE_PARAMS,
    FlipMeta.STAGE_STEPS,
    FlipMeta.NUM_SAMPLES,
    NUM_STEPS_META,
)


def release_metrics(
    metrics: Mapping[str, Any] | None, public_weight: int | None, update_norm: float | None
) -> tuple[dict[str, Any], list[str]]:
    """The metrics a training result may carry under DP, and the names of those withheld.

    Args:
        metrics: what the trainer reported (may be None).
        public_weight: the public weight sent as ``num_samples`` (None: none is sent).
        update_norm: the norm of the update as it leaves (None: none is sent).
    """
    metrics = dict(metrics or {})
    released = {k: metrics[k] for k in RELEASED_METRICS if k in metrics and k != "update_norm"}
    if update_norm is not None:
        released["update_norm"] = float(update_norm)
    if public_weight is not None:
        released[NUM_SAMPLES] = int(public_weight)
    withheld = sorted(k for k in metrics if k not in RELEASED_METRICS and k != NUM_SAMPLES)
    return released, withheld


def release_meta(meta: Mapping[str, Any], public_weight: int, keep_steps: bool) -> tuple[dict[str, Any], list[str]]:
    """An update's DXO meta as it may leave under DP (the sample count replaced by ``public_weight``; the step
    count kept only if ``keep_steps``), and the keys dropped."""
    kept = {k: v for k, v in meta.items() if k in RELEASED_META and (keep_steps or k != NUM_STEPS_META)}
    kept[FlipMeta.NUM_SAMPLES] = int(public_weight)
    return kept, sorted(str(k) for k in meta if k not in kept)
