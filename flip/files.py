"""Small file helpers shared across flip, and the one way flip writes JSON (strict: no NaN, no Infinity)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from flip.errors import JSONValueError


def _non_finite_path(obj: Any, path: str = "") -> str | None:
    """Where in ``obj`` the first NaN/Inf float is (``a.b[2]``), or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path or "the value")
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _non_finite_path(value, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = _non_finite_path(value, f"{path}[{i}]")
            if found:
                return found
    return None


def to_json(obj: Any, **dumps_kwargs: Any) -> str:
    """``json.dumps(obj, allow_nan=False, **dumps_kwargs)``: strict JSON, which every reader can parse.

    Raises:
        JSONValueError: ``obj`` holds NaN or Infinity (the message names the key, never other values) or something
            JSON cannot hold.
    """
    try:
        return json.dumps(obj, allow_nan=False, **dumps_kwargs)
    except ValueError as exc:
        where = _non_finite_path(obj)
        if where is None:
            raise JSONValueError(f"cannot write JSON: {exc}") from exc
        raise JSONValueError(f"cannot write JSON: {where} is NaN or Infinity, which JSON cannot hold") from exc
    except TypeError as exc:
        raise JSONValueError(f"cannot write JSON: {exc}") from exc


def write_json_atomic(path: Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """Write ``obj`` as strict JSON (:func:`to_json`) to ``path`` through a ``<name>.tmp`` file beside it, then
    ``os.replace``.

    Readers see the old file or the new one, never half of it. ``dumps_kwargs`` go to ``json.dumps``.

    Raises:
        JSONValueError: ``obj`` holds NaN/Infinity (named) or a value JSON cannot hold; nothing is written.
    """
    text = to_json(obj, **dumps_kwargs)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` as a new file that only its owner can read or write, from its creation on.

    The file is created with mode 0600 (``O_CREAT | O_EXCL``, never following a symlink) and set to exactly 0600
    before a byte is written, whatever the umask: there is no moment at which others could read it. A file
    already at ``path`` is removed first (it is replaced, never written through).
    """
    path = Path(path)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(fd, 0o600)  # the umask can only have removed bits: make it exactly 0600
        file.write(text)
    return path
