"""The README's walk-through ("Deploying to hospitals"), run as written: every fenced block marked
``<!-- walk-through -->``, in order, as one bash script (``set -euo pipefail``), in a temporary HOME, with this
environment's ``bin`` first on PATH (the README's step 0). Real processes: the provisioned server and two sites
started with their kits' start.sh on 127.0.0.1, the trial S3 server, a job submitted with ``nvflare job submit``,
``flip status --wait``, the model and report downloaded, everything stopped by the walk-through's own commands.

The README and this test cannot drift: the test runs the README's text. Afterwards no process of the walk-through
may be left (any left is killed, and the test fails)."""

from __future__ import annotations

import html
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from flip.platform.dev import LocalPlatform
from flip.report import UPLOAD_PENDING
from tests.conftest import REPO, clean_env
from tests.e2e.processes import kill, wait_gone

MARK = "<!-- walk-through -->"
PORTS = (8002, 8003)
TIMEOUT = 1200
NOTE = "site policy applies PercentilePrivacy(10, 0.01); the job's PercentilePrivacy(10, 0.01) also applies"


def walkthrough_blocks(readme: str) -> list[str]:
    """The fenced blocks of the README that follow a ``<!-- walk-through -->`` line, dedented, in order."""
    blocks = []
    lines = readme.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        start = next(j for j in range(i + 1, len(lines)) if lines[j].strip())
        assert lines[start].strip().startswith("```"), f"README line {start + 1}: a walk-through mark needs a block"
        indent = len(lines[start]) - len(lines[start].lstrip())
        end = next(j for j in range(start + 1, len(lines)) if lines[j].strip() == "```")
        blocks.append("\n".join(text[indent:] for text in lines[start + 1 : end]))
    return blocks


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.unit
def test_the_walkthrough_blocks_are_found_in_order():
    blocks = walkthrough_blocks((REPO / "README.md").read_text())
    script = "\n".join(blocks)
    assert len(blocks) == 8
    steps = [
        "flip provision",
        "flip trial data",
        "flip s3 serve",
        "start.sh",
        "flip doctor",
        "nvflare job submit",
        "flip status",
        "flip models download",
        "nvflare system shutdown all",
        "flip s3 stop",
    ]
    positions = [script.index(step) for step in steps]
    assert positions == sorted(positions), "the walk-through's steps are out of order"


@pytest.mark.e2e
@pytest.mark.s3
def test_the_readme_walkthrough_runs_as_written(tmp_path):
    busy = [p for p in PORTS if not _port_free(p)]
    if busy:
        pytest.skip(f"the walk-through uses ports {PORTS} as written; {busy} are in use on this machine")
    home = tmp_path / "home"
    home.mkdir()
    trial = home / "flip-trial"
    script = tmp_path / "walkthrough.sh"
    script.write_text(
        "set -euo pipefail\nset -x\n" + "\n".join(walkthrough_blocks((REPO / "README.md").read_text())) + "\n"
    )
    env = clean_env("FLIP_", "AWS_", "NVFLARE_", "NVFL_")
    env.update(
        {
            "HOME": str(home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        }
    )
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    started = time.monotonic()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:  # files: the kits' daemons keep them open
        bash = subprocess.Popen(
            ["bash", str(script)],
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        code = bash.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        code = None
    elapsed = time.monotonic() - started
    left = wait_gone(trial, bash.pid, seconds=60)
    try:
        said, log = out.read_text(errors="replace"), _redacted(err.read_text(errors="replace"))
        assert code == 0, f"the walk-through failed (exit {code}) after {elapsed:.0f} s:\n{log[-6000:]}\n{said[-3000:]}"
        assert left == [], f"processes left running after the walk-through stopped everything: {left}"
        _check_results(trial, said)
    finally:
        _kill(trial, bash.pid, left)


def _redacted(text: str) -> str:
    """The script's trace without the trial S3 server's generated secret (``set -x`` shows what s3.env sets)."""
    return re.sub(r"(AWS_SECRET_ACCESS_KEY=)\S+", r"\1***", text)


def _kill(trial: Path, session: int, left: list[int]) -> None:
    """Whatever the walk-through left (on failure): stop the network through its own commands, then kill."""
    if not left:
        return
    kits = trial / "kits" / "workspace" / "flip" / "prod_00"
    env = {
        **clean_env("FLIP_", "AWS_"),
        "HOME": str(trial.parent),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    if (kits / "admin@flip.org").is_dir():
        subprocess.run(
            [
                str(Path(sys.executable).with_name("nvflare")),
                "system",
                "shutdown",
                "all",
                "--force",
                "--startup-kit",
                str(kits / "admin@flip.org"),
            ],
            env=env,
            capture_output=True,
            timeout=120,
        )
    subprocess.run(
        [sys.executable, "-m", "flip.cli", "s3", "stop", "--dir", str(trial / "s3")],
        env=env,
        capture_output=True,
        timeout=60,
    )
    kill(wait_gone(trial, session, seconds=20))


def _check_results(trial: Path, said: str) -> None:
    (job_dir,) = (trial / "jobs").iterdir()
    model_id = job_dir.name
    statuses = [s["status"] for s in LocalPlatform(trial / "flip").read_statuses(model_id)]
    assert statuses == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]
    assert "RESULTS_UPLOADED" in said  # flip status --wait showed the lifecycle
    assert "['layers.1.bias', 'layers.1.weight', 'layers.4.bias', 'layers.4.weight']" in said  # loaded
    report = html.unescape((trial / "report" / "index.html").read_text())
    assert f"TRAINING_STARTED → {UPLOAD_PENDING}" in report
    for site in ("hospital-a", "hospital-b"):
        assert f"{site}: {NOTE}" in report  # the site's policy and the job's filter: both named
    assert (trial / "server-storage" / "jobs-storage").is_dir()  # --server-storage: not /tmp/nvflare
    kits = trial / "kits" / "workspace" / "flip" / "prod_00"
    for kit in ("hospital-a", "hospital-b"):  # each site's run log says it
        assert any(NOTE in log.read_text(errors="replace") for log in (kits / kit).rglob("log.txt")), kit
    # the server's: NVFlare moves a finished job's server folder into its storage, as a zip
    (stored,) = (trial / "server-storage" / "jobs-storage").glob("*/workspace")
    with zipfile.ZipFile(stored) as workspace:
        assert NOTE in workspace.read("log.txt").decode(errors="replace")
    assert "ok   connection: TLS to localhost:8002" in said and "ok   S3: models bucket 'flip-models'" in said
    assert "ok   images:" in said
