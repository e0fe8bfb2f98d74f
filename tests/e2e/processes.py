"""The processes an end-to-end test started, found by what they have in common (a temporary folder on their
command line, or the session of the shell that started them), to check that none is left and to end them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def processes_of(folder: Path, session: int | None = None) -> list[int]:
    """Every live process (not this one, no zombie) whose command line names ``folder`` or whose session is
    ``session``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if fields[0] == "Z":
            continue
        if str(folder) in command or (session is not None and int(fields[3]) == session):
            found.append(int(entry.name))
    return found


def wait_gone(folder: Path, session: int | None = None, seconds: float = 60) -> list[int]:
    """Wait up to ``seconds`` for :func:`processes_of` to be empty; return those still alive."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not processes_of(folder, session):
            return []
        time.sleep(1)
    return processes_of(folder, session)


def kill(pids: list[int]) -> None:
    """SIGKILL each of ``pids`` (only processes a test found with :func:`processes_of`)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
