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
