"""The trial S3 server as a step: ``flip s3 serve --dir DIR --detach`` runs the embedded S3 server (weed mini) in the
background, writes the variables that point at it to ``DIR/s3.env`` (0600: it holds the generated secret) once it
serves, and ``flip s3 stop --dir DIR`` stops it (only the process it started: its pid and command line).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from flip.errors import FlipError

#: in the S3 server's folder: the variables to use it (``export`` lines) and the serving process's id
ENV_FILE = "s3.env"
PID_FILE = "s3.pid"
LOG_FILE = "serve.log"


def env_lines(env: dict[str, str]) -> list[str]:
    """``export KEY=VALUE`` lines (values shell-quoted)."""
    return [f"export {key}={shlex.quote(value)}" for key, value in env.items()]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def serving_pid(root: str | Path) -> int | None:
    """The pid of the ``flip s3 serve`` serving ``root`` (None if none runs): its pid file, checked against the
    process's command line so a reused pid is never taken for it."""
    root = Path(root).resolve()
    try:
        pid = int((root / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    command = _cmdline(pid)
    if not (_alive(pid) and "s3" in command and "serve" in command and "--dir" in command[:-1]):
        return None
    served = Path(command[command.index("--dir") + 1])
    try:
        served = (Path(os.readlink(f"/proc/{pid}/cwd")) / served).resolve()
    except OSError:
        return None
    return pid if served == root else None


def start_s3(root: str | Path, bucket: str = "flip-models", timeout: float = 120) -> Path:
    """Start ``flip s3 serve --dir root`` in the background; return ``root/s3.env`` once it serves.

    Raises:
        FlipError: one already serves ``root``, or it did not start (the log's last lines named).
    """
    root = Path(root).resolve()
    if serving_pid(root):
        raise FlipError(f"an S3 server already serves {root} (pid {serving_pid(root)}): flip s3 stop --dir {root}")
    root.mkdir(parents=True, exist_ok=True)
    (root / ENV_FILE).unlink(missing_ok=True)
    with open(root / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flip.cli",
                "s3",
                "serve",
                "--bucket",
                bucket,
                "--dir",
                str(root),
                "--env-file",
                str(root / ENV_FILE),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (root / ENV_FILE).is_file():
            return root / ENV_FILE
        if process.poll() is not None:
            break
        time.sleep(0.2)
    if process.poll() is None:
        process.terminate()
    tail = " | ".join((root / LOG_FILE).read_text(errors="replace").strip().splitlines()[-3:])
    raise FlipError(f"the S3 server did not start in {timeout:.0f} s (see {root / LOG_FILE}): {tail}")


def stop_s3(root: str | Path, timeout: float = 30) -> int | None:
    """Stop the ``flip s3 serve`` serving ``root`` (it stops its weed server); return its pid, None if none ran.

    Raises:
        FlipError: it did not stop within ``timeout`` seconds.
    """
    root = Path(root).resolve()
    pid = serving_pid(root)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return pid
        time.sleep(0.2)
    raise FlipError(f"the S3 server (pid {pid}) did not stop within {timeout:.0f} s")
