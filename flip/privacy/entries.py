"""Which entries of a model update a privacy filter changes: floating-point ones; integer ones are counters.

A FLIP app's trainer sends every ``state_dict`` entry (``get_model_weights_diff``), so an update can hold integer
buffers such as BatchNorm's ``num_batches_tracked`` (int64, 0-d): how many batches the site trained this round.
They are not weights: the percentile policy passes them unchanged (the annotation counts them) when they are
counters (0-d) or did not change (all zero, e.g. a constant index buffer); any other integer entry could carry
anything and is refused, naming it (fail closed). Differential privacy cannot noise them, so GaussianPrivacy
withholds every integer entry (the server keeps its own value). Other dtypes (bool, complex, object) stay with
the floating-point entries, where the filter refuses them naming the entry.

No NVFlare import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from flip.errors import PrivacyError


def is_integer_entry(value: Any) -> bool:
    """True if ``value`` is a numpy array or torch tensor of a (signed or unsigned) integer dtype."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool
    return isinstance(value, np.ndarray) and value.dtype.kind in "iu"


def split_integer_entries(
    update: Mapping[str, Any], counters_only: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an update into its floating-point entries (to filter) and its integer entries.

    Entries that are neither a floating-point nor an integer array or tensor stay with the floating-point ones,
    where the filter refuses them naming the entry and its type.

    Args:
        update: names to numpy arrays or torch tensors.
        counters_only: refuse an integer entry that is neither 0-d (a counter) nor all zero (unchanged).

    Returns:
        (floating-point and other entries, integer entries), each in the update's order.

    Raises:
        PrivacyError: with ``counters_only``, an integer entry that is not a counter or unchanged (named).
    """
    floats: dict[str, Any] = {}
    integers: dict[str, Any] = {}
    for key, value in update.items():
        if not is_integer_entry(value):
            floats[key] = value
            continue
        if counters_only and value.ndim != 0 and bool((value != 0).any()):
            raise PrivacyError(
                f"update entry {key!r} is an integer array of shape {tuple(value.shape)} that changed: "
                "only integer counters (0-d, e.g. num_batches_tracked) or unchanged integer buffers "
                "may leave a site"
            )
        integers[key] = value
    return floats, integers


def merge_in_order(update: Mapping[str, Any], *parts: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``parts`` in the order of ``update`` (entries of ``update`` found in no part are left out).

    Raises:
        PrivacyError: a part holds an entry the update does not (a filter must not add entries).
    """
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    extra = [k for k in merged if k not in update]
    if extra:
        raise PrivacyError(f"the filtered update holds entry {extra[0]!r}, which the update did not")
    return {k: merged[k] for k in update if k in merged}
