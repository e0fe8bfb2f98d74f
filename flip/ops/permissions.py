"""Secrets at rest: what only its owner may read (private keys, the provisioning state) and the check for it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from flip.errors import FlipError

#: a private file (a key, the provisioning state) and a folder holding one
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
#: the permission bits of the group and of others
_SHARED_BITS = 0o077


def mode_of(path: Path) -> int:
    """The permission bits of ``path`` itself (a symlink is not followed)."""
    return stat.S_IMODE(Path(path).lstat().st_mode)


def shared_paths(folder: Path) -> list[Path]:
    """``folder`` and everything under it that its group or others may access (symlinks are not followed)."""
    folder = Path(folder)
    if not folder.exists():
        return []
    found = [folder] if mode_of(folder) & _SHARED_BITS else []
    if folder.is_dir() and not folder.is_symlink():
        found += [p for p in sorted(folder.rglob("*")) if mode_of(p) & _SHARED_BITS]
    return found


def check_private(folder: Path, what: str) -> None:
    """Refuse ``folder`` if it, or anything in it, is open to its group or to others.

    Raises:
        FlipError: naming the first such path, its mode and the command that fixes it.
    """
    shared = shared_paths(folder)
    if shared:
        first = shared[0]
        raise FlipError(
            f"{first} is open to other users (mode {mode_of(first):04o}): {what}; make it private "
            f"with `chmod -R go= {folder}` (and check who could have read it), then run again"
        )


def make_private(path: Path) -> None:
    """Make ``path`` private: a folder and every folder under it 0700, every file under it 0600 (symlinks skipped)."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return
    if path.is_dir():
        os.chmod(path, PRIVATE_DIR)
        for child in path.rglob("*"):
            if not child.is_symlink():
                os.chmod(child, PRIVATE_DIR if child.is_dir() else PRIVATE_FILE)
    else:
        os.chmod(path, PRIVATE_FILE)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its missing parents) if needed and make the folder itself 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)
    return path
