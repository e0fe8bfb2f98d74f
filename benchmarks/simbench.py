"""What the simulator benchmarks share: a user app of a given size, one simulator run in a child process with its
wall time and memory sampled, and the stock NVFlare job (FedAvgRecipe + Client API) of the same training.

A run is a child process (``python -m benchmarks.<script> --child ...``) so that each run starts from a fresh
interpreter; the parent samples the resident memory of the child and every process under it (the simulator's
server and site processes) every ``SAMPLE_S`` seconds: the peak of their sum, and each process's own peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SAMPLE_S = 0.1
GB = 1e9
#: the width of the benchmark model's square Linear layers (one layer: WIDTH² + WIDTH parameters)
WIDTH = 1024

MODELS_PY = '''\
"""The benchmark model: {layers} square Linear layers of width {width} ({params} parameters, float32)."""

import torch


class BenchNet(torch.nn.Sequential):
    def __init__(self, layers: int = {layers}, width: int = {width}):
        torch.manual_seed(0)  # every site and the server start from the same weights
        super().__init__(*[torch.nn.Linear(width, width) for _ in range(layers)])


def get_model() -> torch.nn.Module:
    return BenchNet()
'''

TRAIN_STEP = '''\
def one_step(model, lr: float = 1e-3) -> float:
    """One SGD step on a fixed batch of 4: the training kept tiny so that the framework's cost dominates."""
    x = torch.ones(4, {width})
    loss = model(x).square().mean()
    model.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)
    model.zero_grad(set_to_none=True)
    return float(loss)
'''

TRAINER_PY = '''\
"""The benchmark trainer (our plain contract): one SGD step."""

import torch

{step}

class FLIP_TRAINER:
    def __init__(self, config: dict):
        pass

    def train(self, model, ctx) -> dict:
        model.train()
        loss = one_step(model)
        return {{"num_samples": 4, "num_steps": 1, "loss": loss}}
'''

VALIDATOR_PY = '''\
"""The benchmark validator (our plain contract): the loss on the fixed batch."""

import torch


class FLIP_VALIDATOR:
    def __init__(self, config: dict):
        pass

    def validate(self, model, ctx) -> dict:
        model.eval()
        with torch.no_grad():
            loss = float(model(torch.ones(4, {width})).square().mean())
        return {{"loss": loss, "num_samples": 4}}
'''

CLIENT_API_PY = '''\
"""Stock NVFlare: the same model and one-step training through NVFlare's Client API."""

import torch
import nvflare.client as flare

from models import get_model

{step}

def main():
    flare.init()
    model = get_model()  # built once, as NVFlare's examples do
    while flare.is_running():
        received = flare.receive()
        model.load_state_dict({{k: torch.as_tensor(v) for k, v in received.params.items()}})
        if flare.is_evaluate():
            with torch.no_grad():
                loss = float(model(torch.ones(4, {width})).square().mean())
            flare.send(flare.FLModel(metrics={{"loss": loss}}))
            continue
        model.train()
        loss = one_step(model)
        flare.send(flare.FLModel(params=model.state_dict(), metrics={{"loss": loss}},
                                 meta={{"NUM_STEPS_CURRENT_ROUND": 1}}))


if __name__ == "__main__":
    main()
'''


def layers_for(params: int) -> int:
    """The number of WIDTH×WIDTH Linear layers closest to ``params`` parameters (at least one)."""
    return max(1, round(params / (WIDTH * WIDTH + WIDTH)))


def write_app(folder: Path, params: int) -> tuple[Path, int]:
    """Write the benchmark's user code (ours and the Client API script) and return (folder, exact parameters)."""
    layers = layers_for(params)
    exact = layers * (WIDTH * WIDTH + WIDTH)
    folder.mkdir(parents=True, exist_ok=True)
    step = TRAIN_STEP.format(width=WIDTH)
    (folder / "models.py").write_text(MODELS_PY.format(layers=layers, width=WIDTH, params=exact))
    (folder / "trainer.py").write_text(TRAINER_PY.format(step=step))
    (folder / "validator.py").write_text(VALIDATOR_PY.format(width=WIDTH))
    (folder / "config.json").write_text("{}\n")
    (folder / "client_api_train.py").write_text("import torch\n" + CLIENT_API_PY.format(step=step, width=WIDTH))
    return folder, exact


@dataclass
class Measured:
    """One child run: wall time, the peak of the summed RSS, each process's own peak, and what the child printed."""

    seconds: float
    peak_rss: int
    per_process: dict[str, int] = field(default_factory=dict)
    rc: int = 0
    result: dict = field(default_factory=dict)

    def role_peak(self, role: str) -> int:
        return max((v for k, v in self.per_process.items() if k.startswith(role)), default=0)


def _role(proc: psutil.Process, root: int) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    if proc.pid == root:
        return "server"  # the simulator's parent process runs the server and the workflows
    if "simulator_worker" in cmd or "client" in cmd or "worker" in cmd:
        return "site"
    if "weed" in cmd:
        return "s3"
    return "server"


def run_child(args: list[str], env: dict | None = None, exclude: set[int] | None = None) -> Measured:
    """Run ``python <args>`` and sample the memory of it and every process under it until it exits.

    The child's last stdout line starting with ``{`` is read as JSON into ``result``; ``exclude`` lists pids not
    counted (e.g. an S3 server the parent started and shares between runs).
    """
    started = time.perf_counter()
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)  # this tree's flip
    proc = subprocess.Popen(
        [PYTHON, *args],
        cwd=REPO,
        env={**os.environ, **(env or {}), "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        text=True,
    )
    root = psutil.Process(proc.pid)
    peak, per_process = 0, {}
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                if exclude and p.pid in exclude:
                    continue
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                key = f"{_role(p, root.pid)}:{p.pid}"
                per_process[key] = max(per_process.get(key, 0), rss)
            peak = max(peak, total)
            stop.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    result = {}
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    return Measured(seconds, peak, per_process, proc.returncode, result)


def gb(value: int) -> str:
    return f"{value / GB:.2f}"


def summary(name: str, m: Measured) -> str:
    site = max((v for k, v in m.per_process.items() if k.startswith("site")), default=0)
    return (
        f"{name:>6}: {m.seconds:7.1f} s  peak RSS {gb(m.peak_rss)} GB summed, server {gb(m.role_peak('server'))} "
        f"GB, largest site process {gb(site)} GB  (rc {m.rc})"
    )


def our_job_folder(workdir: Path, app: Path, sites: int, rounds: int, model_id: str, **options) -> Path:
    """Export our standard job with ``app`` as its custom code."""
    sys.path.insert(0, str(REPO))
    from flip.jobs.standard import standard_job

    job = standard_job(
        name="bench_ours", model_id=model_id, num_rounds=rounds, min_clients=sites, app_dir=app, **options
    )
    job.export_job(str(workdir))
    return workdir / "bench_ours"


def stock_job_folder(
    workdir: Path, app: Path, sites: int, rounds: int, task_request_interval: float | None = None, name="bench_stock"
) -> Path:
    """Export stock NVFlare's job: FedAvgRecipe (ScatterAndGather-style FedAvg), the Client API sending weight
    differences, the final global model evaluated at every site. No flip component."""
    sys.path.insert(0, str(app))
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.client.config import TransferType
    from nvflare.recipe.utils import add_final_global_evaluation

    recipe = FedAvgRecipe(
        name=name,
        model={"path": "models.BenchNet", "args": {}},
        min_clients=sites,
        num_rounds=rounds,
        train_script=str(app / "client_api_train.py"),
        params_transfer_type=TransferType.DIFF,
    )
    add_final_global_evaluation(recipe)
    if task_request_interval is not None:  # the server setting our jobs carry (flip/jobs/common.py ServerSettings)
        recipe.add_server_config({"server": {"task_request_interval": task_request_interval}})
    recipe.export(str(workdir))
    folder = workdir / name
    # the script imports models.py: ship it beside the script
    for app_folder in folder.glob("app*"):
        (app_folder / "custom").mkdir(exist_ok=True)
        (app_folder / "custom" / "models.py").write_text((app / "models.py").read_text())
    return folder


def write_cohorts(local_dir: Path, sites: list[str]) -> None:
    """Each site's (empty) cohort, which the dev platform copies as the site's data for a run."""
    for site in sites:
        (local_dir / "cohorts" / site).mkdir(parents=True, exist_ok=True)
        (local_dir / "cohorts" / site / "README").write_text("benchmark: no data\n")


def simulate(job_dir: Path, workspace: Path, sites: int) -> int:
    """Run ``job_dir`` in NVFlare's simulator (the same runner for both jobs), every site in its own thread."""
    sys.path.insert(0, str(REPO))
    from flip.simulate import run_simulator

    return run_simulator(job_dir, workspace, sites=sites, threads=sites)


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix, dir=os.environ.get("FLIP_BENCH_TMP"))


def dedent(text: str) -> str:
    return textwrap.dedent(text).strip()
