"""``get_model_weights_diff``: the weight update a FLIP trainer sends back (FLIP: model_weights_handling.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey

from flip.checks import check_int


def _to_numpy(value: Any) -> np.ndarray:
    """A CPU numpy array of a tensor (any device; bfloat16 as float32) or of an array-like."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of flip
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(value)


def get_model_weights_diff(original_weights: Mapping[str, Any], new_weights: Mapping[str, Any], iterations: int) -> DXO:
    """Return the WEIGHT_DIFF DXO of a local training: ``new - original`` for every entry of ``new_weights``.

    Each key of ``new_weights`` (a ``state_dict()`` of tensors on any device, or a mapping of numpy arrays)
    gives one CPU numpy array, integer buffers (e.g. BatchNorm's ``num_batches_tracked``) included; extra keys of
    ``original_weights`` are ignored. One key at a time is converted, so no second copy of the model is held.

    Args:
        original_weights: the weights the task brought (name -> numpy array or tensor).
        new_weights: the weights after local training (name -> tensor or numpy array).
        iterations: the number of training steps of this round, >= 0 (the DXO's ``NUM_STEPS_CURRENT_ROUND``,
            which weighs this site in the average).

    Returns:
        ``DXO(WEIGHT_DIFF, {name: diff}, meta={NUM_STEPS_CURRENT_ROUND: iterations})``.

    Raises:
        KeyError: a key of ``new_weights`` is not in ``original_weights`` (named).
        ValueError: the two arrays of a key have different shapes (named), or ``iterations`` is not an int >= 0.
    """
    iterations = check_int("iterations", iterations, minimum=0)
    diff: dict[str, np.ndarray] = {}
    for name, value in new_weights.items():
        if name not in original_weights:
            raise KeyError(f"{name!r} is in the new weights but not in the original weights")
        new = _to_numpy(value)
        old = _to_numpy(original_weights[name])
        if new.shape != old.shape:
            raise ValueError(f"weights {name!r} changed shape: {old.shape} before training, {new.shape} after")
        # a new array (`new` may share the model's memory and is never changed); 0-d stays an array, not a scalar
        diff[name] = np.asarray(new - old)
    return DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: iterations})
