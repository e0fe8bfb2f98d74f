"""FLIP's app helpers (FLIP: flip-utils/flip/utils/): ``Utils``, ``get_model_weights_diff``, ``FLIPDataset``; and
flip's ``make_private`` (record-level DP-SGD under the site's policy, flip.utils.dp).

``get_model_weights_diff`` (torch, nvflare) and ``FLIPDataset`` (monai) are imported when first used, so
``from flip.utils import Utils`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flip.utils.utils import Utils

if TYPE_CHECKING:
    from flip.utils.dp import make_private
    from flip.utils.flip_dataset import FLIPDataset
    from flip.utils.model_weights_handling import get_model_weights_diff

_LAZY = {
    "get_model_weights_diff": "flip.utils.model_weights_handling",
    "FLIPDataset": "flip.utils.flip_dataset",
    "make_private": "flip.utils.dp",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flip.utils' has no attribute {name!r}")


__all__ = ["FLIPDataset", "Utils", "get_model_weights_diff", "make_private"]
