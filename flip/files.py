"""Small file helpers shared across flip."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` through a ``<name>.tmp`` file beside it, then ``os.replace``.

    Readers see the old file or the new one, never half of it. ``dumps_kwargs`` go to ``json.dumps``.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, **dumps_kwargs))
    os.replace(tmp, path)
    return path
