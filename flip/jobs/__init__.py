"""The one Python source of the job folders under ``jobs/`` (written with NVFlare's job API).

``write_job("standard", out_dir)`` writes ``out_dir/standard``; ``flip jobs export`` rewrites ``jobs/``; a test
compares the checked-in folders with what this module writes.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nvflare.job_config.api import FedJob

from flip.constants import JobName
from flip.jobs.common import DEFAULT_MODEL_ID, DEMO_APP_DIR, MULTISTAGE_APP_DIR
from flip.jobs.evaluation import evaluation_job
from flip.jobs.fed_opt import fed_opt_job
from flip.jobs.multi_stage import multi_stage_job
from flip.jobs.standard import standard_job

#: job name -> builder(**options) -> FedJob, in the order of flip.constants.JOB_NAMES
JOBS: dict[str, Callable[..., FedJob]] = {
    JobName.STANDARD: standard_job,
    JobName.EVALUATION: evaluation_job,
    JobName.FED_OPT: fed_opt_job,
    JobName.MULTI_STAGE: multi_stage_job,
}
_SHORT_PACKAGES = ("flip.nvflare.components", "flip.nvflare.executors", "flip.nvflare.controllers")


def _public_path(path: str) -> str:
    """The public path of a flip class a job names: ``flip.nvflare.components.percentile_privacy.PercentilePrivacy``
    -> ``flip.nvflare.components.PercentilePrivacy``. The first package of components, executors, controllers that
    exports the class wins (so CleanupImages, an executor, is named ``flip.nvflare.components.CleanupImages``, as
    SPEC.md and FLIP's configs name it)."""
    if not path.startswith("flip.nvflare."):
        return path
    module_name, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), name)
    for package in _SHORT_PACKAGES:
        module = importlib.import_module(package)
        if name in module.__all__ and getattr(module, name) is cls:
            return f"{package}.{name}"
    return path


def _shorten_paths(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _public_path(v) if k == "path" and isinstance(v, str) else _shorten_paths(v) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_shorten_paths(v) for v in node]
    return node


def export_job(job: FedJob, out_dir: str | Path) -> Path:
    """Export ``job`` to ``out_dir/<job name>`` with component paths in their public form; return the folder."""
    out_dir = Path(out_dir)
    job.export_job(str(out_dir))
    folder = out_dir / job.name
    for config in sorted(folder.glob("*/config/*.json")):
        data = json.loads(config.read_text())
        config.write_text(json.dumps(_shorten_paths(data), indent=4) + "\n")
    meta = folder / "meta.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()), indent=4) + "\n")
    for cache in folder.rglob("__pycache__"):
        shutil.rmtree(cache)
    return folder


def write_job(name: str, out_dir: str | Path, **options: Any) -> Path:
    """Build job ``name`` with ``options`` and export it under ``out_dir``; return the job folder.

    Raises:
        ValueError: unknown job name or a bad option (the message names it).
    """
    if name not in JOBS:
        raise ValueError(f"unknown job {name!r}: expected one of {sorted(JOBS)}")
    return export_job(JOBS[name](**options), out_dir)


__all__ = ["DEFAULT_MODEL_ID", "DEMO_APP_DIR", "JOBS", "MULTISTAGE_APP_DIR", "export_job", "write_job"]
