"""``make demo`` / ``flip demo``: hospitals train (or evaluate) a digits classifier in the NVFlare simulator.

Steps: write each site's data (non-IID) -> start an embedded S3 server -> create the job from the demo's app with a
new model id -> run it in the simulator with the privacy filter on -> verify the uploaded manifest -> download the
model and the report, score the model on held-out digits -> print a summary. Exits non-zero on any failure.

The demo's app is a FLIP app (``flip/demo/flip_app``, FLIP's Executor contract): each site's data comes through
``get_dataframe`` (a dataframe of accession ids and labels) and ``get_by_accession_number`` (one DICOM file per
accession), and the job is made as ``flip job create`` makes it. Two variants keep our plain contract
(``flip/demo/app``, PNG images from the platform): a method that changes the local training inside our
``RUN_TRAINER`` (``--aggregation fedprox``, ``--uncertainty swag``), and the multi-stage demo
(``flip/demo/multistage``).

``--job``: ``standard`` (default), ``fed_opt``, ``multi_stage``, or ``evaluation`` (trains with the standard
job first, then evaluates that model at every site: FLIP's evaluation of a checkpoint with the FLIP app).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from flip.constants import (
    AGGREGATIONS,
    DEMO_JOBS,
    UNCERTAINTY_METHODS,
    Aggregation,
    JobName,
    RunFile,
    RunStatus,
    Uncertainty,
    UserFile,
)
from flip.errors import FlipError

#: the demo's FLIP app: FLIP's Executor contract, data through get_dataframe + get_by_accession_number (DICOM)
FLIP_APP_DIR = Path(__file__).resolve().parent / "flip_app"
#: FLIP's project id and cohort query the demo's jobs carry (the dev platform checks and logs them)
DEMO_PROJECT_ID, DEMO_QUERY = "digits-demo", "SELECT accession_id, label FROM digits"
#: the name of the evaluated model in the evaluation job (config.json "models") and its checkpoint file
EVALUATED_MODEL, CHECKPOINT = "digits", "model.pt"
#: written into a folder the demo created; the demo deletes the contents of no other folder
#: ``--dp-level``: record-level DP-SGD at each site (the site's policy, default) or client-level DP (the job's filter)
DP_LEVELS = ("record", "client")
#: the demo app's training under record-level DP-SGD (benchmarks/dp_utility.py measured it): larger batches (a
#: larger sampling rate costs less ε per record), more epochs, a larger step
RECORD_LEVEL_TRAINING = {"LOCAL_ROUNDS": 5, "BATCH_SIZE": 64, "LEARNING_RATE": 0.2}
#: the sites' max_grad_norm under record-level DP-SGD in the demo (its policy's; --dp-clip-norm overrides)
RECORD_LEVEL_CLIP = 1.0
#: the held-out accuracy below which the demo fails: without DP, and under record-level DP
MIN_ACCURACY, MIN_ACCURACY_RECORD_DP = 0.8, 0.7
MARKER = ".flip-demo"
_MARKER_TEXT = "This folder was created by `flip demo`, which clears and reuses it on its next run.\n"


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def merged_rounds(metrics: dict) -> list[dict]:
    """metrics.json's rounds, each site's values including what a FLIP app sent with send_metrics_value in that
    round (``flip_metrics``: a label's last value in the round; the server numbers rounds from 1, as ``rounds``)."""
    rounds = {
        entry["round"]: {**entry, "sites": {site: dict(values) for site, values in entry["sites"].items()}}
        for entry in metrics.get("rounds", [])
    }
    for sent in metrics.get("flip_metrics", []):
        entry = rounds.setdefault(sent["round"], {"round": sent["round"], "sites": {}})
        for site, labels in sent["sites"].items():
            for label, values in labels.items():
                entry["sites"].setdefault(site, {}).setdefault(label, values[-1])
    return [rounds[r] for r in sorted(rounds)]


def _table(rounds: list[dict], sites: list[str], name: str) -> list[str]:
    lines = [f"{'round':>5}  " + "  ".join(f"{s:>10}" for s in sites) + f"  {'mean':>10}"]
    for entry in rounds:
        row = [entry["sites"].get(s, {}).get(name) for s in sites]
        mean = entry.get("global", {}).get(name)
        if mean is None and row and all(v is not None for v in row):
            mean = sum(row) / len(row)  # a FLIP app's metrics carry no sample counts: the plain mean
        row.append(mean)
        stage = f"  ({entry['stage']})" if entry.get("stage") else ""
        lines.append(
            f"{entry['round']:>5}  " + "  ".join(f"{v:>10.3f}" if v is not None else f"{'-':>10}" for v in row) + stage
        )
    return lines


class _Demo:
    """One demo: its folder, sites, S3 server and the runs it made."""

    def __init__(self, workdir: Path, names: list[str], threads: int | None, server, site_data=None):
        self.workdir, self.names, self.threads, self.server = workdir, names, threads, server
        self.local_dir = workdir / "flip"
        self.site_data = site_data
        self.run_seconds = 0.0

    def run(
        self,
        job: str,
        model_id: str,
        app_dir: Path | None = None,
        training: dict[str, Any] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Write and simulate ``job`` (from the FLIP app ``app_dir`` as ``flip job create`` does, else our job
        folder, its config.json updated with ``training``); return its verified manifest, objects and statuses (or
        raise FlipError)."""
        from flip.jobs import write_job
        from flip.jobs.flip_app import create_job
        from flip.platform.dev import LocalPlatform
        from flip.simulate import run_simulator
        from flip.storage.client import make_s3_client
        from flip.storage.layout import run_prefix
        from flip.storage.manifest import verify_run

        if app_dir is not None:
            rounds = options.pop("num_rounds", None)
            sites = {"sites": self.names} if job == JobName.EVALUATION else {"rounds": rounds}
            job_dir = create_job(
                app_dir,
                self.workdir / "jobs" / job,
                job,
                model_id=model_id,
                min_clients=len(self.names),
                project_id=DEMO_PROJECT_ID,
                query=DEMO_QUERY,
                **sites,
                **options,
            ).path
            made = f"FLIP app {app_dir.name}, made by flip job create"
        else:
            job_dir = write_job(job, self.workdir / "jobs", model_id=model_id, min_clients=len(self.names), **options)
            made = "flip's plain contract"
            if training:
                config_path = job_dir / "app" / "custom" / UserFile.CONFIG
                config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **training}, indent=2))
        _say(f"{job} job {job_dir} ({made}; model {model_id}), {len(self.names)} sites in the simulator")
        started = time.monotonic()
        rc = run_simulator(
            job_dir, self.workdir / f"workspace-{job}", sites=self.names, threads=self.threads, site_data=self.site_data
        )
        self.run_seconds += time.monotonic() - started
        statuses = [s for s in LocalPlatform(self.local_dir).read_statuses(model_id)]
        final = statuses[-1] if statuses else {}
        if rc != 0 or final.get("status") != RunStatus.RESULTS_UPLOADED.value:
            raise FlipError(
                f"{job}: simulator exit code {rc}, final status {final.get('status')}: "
                f"{final.get('reason', 'see the logs')} (logs: {self.workdir / f'workspace-{job}'})"
            )
        client = make_s3_client()
        prefix = run_prefix(model_id, final["run_id"])
        manifest = verify_run(client, self.server.bucket, prefix)
        objects = {
            e["key"]: client.get_object(Bucket=self.server.bucket, Key=prefix + e["key"])["Body"].read()
            for e in manifest["objects"]
        }
        statuses = [s for s in statuses if s["run_id"] == final["run_id"]]
        return {"manifest": manifest, "objects": objects, "statuses": statuses, "prefix": prefix}


def demo_runs(
    sites: int = 2,
    rounds: int = 3,
    threads: int | None = None,
    percentile: float = 10,
    gamma: float = 0.01,
    job: str = JobName.STANDARD,
    aggregation: str = Aggregation.FEDAVG,
    uncertainty: str = Uncertainty.NONE,
    model_test_after_each_round: bool = False,
    dp_epsilon: float | None = None,
    dp_clip_norm: float | None = None,
    dp_level: str = "record",
) -> list[tuple[str, dict[str, Any]]]:
    """Check every demo argument and return the jobs the demo runs, in order: ``[(job name, options)]``.

    Touches no file: each job is built in memory with the options (so the job builders' own rules, e.g. that
    differential privacy and SWAG do not combine, are checked too) and nothing is written.

    Raises:
        ValueError: naming the first bad argument and what is allowed.
    """
    from flip.checks import check_gamma, check_percentile, check_positive, check_positive_int
    from flip.jobs import DEFAULT_MODEL_ID, JOBS

    if job not in DEMO_JOBS:
        raise ValueError(f"job must be one of {list(DEMO_JOBS)}, got {job!r}")
    check_positive_int("sites", sites)
    check_positive_int("rounds", rounds)
    if threads is not None and not (check_positive_int("threads", threads) <= sites):
        raise ValueError(f"threads must be between 1 and the number of sites ({sites}), got {threads!r}")
    training = {"percentile": check_percentile(percentile), "gamma": check_gamma(gamma)}
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
    if uncertainty not in UNCERTAINTY_METHODS:
        raise ValueError(f"uncertainty must be one of {list(UNCERTAINTY_METHODS)}, got {uncertainty!r}")
    if not isinstance(model_test_after_each_round, bool):
        raise ValueError(f"model_test_after_each_round must be True or False, got {model_test_after_each_round!r}")
    methods = {
        "aggregation": aggregation,
        "uncertainty": uncertainty,
        "model_test_after_each_round": model_test_after_each_round,
    }
    if dp_clip_norm is not None:
        check_positive("dp_clip_norm", dp_clip_norm)
    if dp_level not in DP_LEVELS:
        raise ValueError(f"dp_level must be one of {list(DP_LEVELS)}, got {dp_level!r}")
    if dp_epsilon is not None and dp_level == "client":
        methods.update(dp_epsilon=check_positive("dp_epsilon", dp_epsilon), dp_clip_norm=dp_clip_norm or 1.0)
    elif dp_epsilon is not None:
        record_level_policy(dp_epsilon, dp_clip_norm)  # checks ε
        if uncertainty == Uncertainty.SWAG:
            raise ValueError("differential privacy and uncertainty 'swag' cannot be combined in the demo")
        if job == JobName.MULTI_STAGE:
            raise ValueError(
                f"record-level DP (dp_level 'record') trains the standard, fed_opt or evaluation demo, got job {job!r}"
            )
    if job == JobName.MULTI_STAGE:
        runs = [(job, training)]
    else:
        trained = JobName.STANDARD if job == JobName.EVALUATION else job
        runs = [(trained, {"num_rounds": rounds, **training, **methods})]
        if job == JobName.EVALUATION:
            runs.append((JobName.EVALUATION, {}))
    flip_app = uses_flip_app(job, methods)
    for name, options in runs:
        if not flip_app:
            JOBS[name](model_id=DEFAULT_MODEL_ID, min_clients=sites, **options)
        elif name != JobName.EVALUATION:  # the evaluation's checkpoint is the trained model: checked when it exists
            from flip.jobs.flip_app import build_job, plan_job

            options = dict(options)
            plan = plan_job(
                FLIP_APP_DIR,
                name,
                model_id=DEFAULT_MODEL_ID,
                min_clients=sites,
                rounds=options.pop("num_rounds"),
                project_id=DEMO_PROJECT_ID,
                query=DEMO_QUERY,
                **options,
            )
            build_job(plan, **options)
    return runs


def record_level_policy(dp_epsilon: float, dp_clip_norm: float | None = None) -> dict[str, Any]:
    """The demo sites' own DP policy (SitePrivacyPolicy's arguments) for record-level DP-SGD at ``dp_epsilon``.

    Raises:
        ValueError: a bad ε or clip norm (named).
    """
    from flip.checks import check_positive
    from flip.provisioning import dp_policy_component

    policy = {
        "level": "record",
        "target_epsilon": check_positive("dp_epsilon", dp_epsilon),
        "delta": 1e-5,
        "max_grad_norm": RECORD_LEVEL_CLIP if dp_clip_norm is None else dp_clip_norm,
    }
    dp_policy_component(policy)  # checks every value as SitePrivacyPolicy does
    return policy


def _record_level_app(workdir: Path) -> Path:
    """The demo's FLIP app with its training set for DP-SGD (:data:`RECORD_LEVEL_TRAINING`)."""
    app = workdir / "dp_app"
    shutil.copytree(FLIP_APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    config = json.loads((app / "config.json").read_text())
    config.update(RECORD_LEVEL_TRAINING)
    (app / "config.json").write_text(json.dumps(config, indent=2))
    return app


def _write_site_policy(workspace: Path, policy: dict[str, Any]) -> Path:
    """Write the simulated sites' local/privacy.json with the DP policy (the simulator copies ``local/`` to every
    participant; the server ignores the policy)."""
    from flip.provisioning import site_privacy_policy

    local = workspace / "local"
    local.mkdir(parents=True, exist_ok=True)
    path = local / "privacy.json"
    path.write_text(json.dumps(site_privacy_policy(differential_privacy=policy, result_filter=False), indent=2))
    return path


def uses_flip_app(job: str, methods: dict[str, Any]) -> bool:
    """True if the demo runs its FLIP app (flip/demo/flip_app) for ``job`` with ``methods``: every job but the
    multi-stage one, unless a method changes the local training inside our plain contract (fedprox, swag)."""
    from flip.jobs.flip_app import PLAIN_ONLY_OPTIONS

    if job == JobName.MULTI_STAGE:
        return False
    return all(methods.get(option) not in values for option, values in PLAIN_ONLY_OPTIONS.items())


def _evaluation_app(workdir: Path, checkpoint: bytes) -> Path:
    """The FLIP app evaluating the trained model: the demo's FLIP app with the model as its checkpoint and
    config.json's ``job_type`` and ``"models"`` set for FLIP's evaluation."""
    app = workdir / "evaluation_app"
    shutil.copytree(FLIP_APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / CHECKPOINT).write_bytes(checkpoint)
    config = json.loads((app / "config.json").read_text())
    config["job_type"] = JobName.EVALUATION
    config["models"] = {EVALUATED_MODEL: {"checkpoint": CHECKPOINT, "path": EVALUATED_MODEL}}
    (app / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return app


def prepare_workdir(workdir: str | Path, owner: str = "the demo", command: str = "`flip demo`") -> Path:
    """Return the demo's folder, empty but for its marker: created if absent, cleared if the demo made it.

    An absent or empty folder is created and marked (``.flip-demo``); a folder holding the marker is emptied
    (the marker stays) and reused. Any other folder, and anything that is not a folder, is refused untouched:
    the demo deletes only what it created. ``flip trial data`` follows the same rule (``owner``, ``command``: who
    the messages and the marker name).

    Raises:
        FlipError: naming the path that is not the demo's own.
    """
    path = Path(workdir).expanduser().resolve()
    if path.is_dir():
        marker = path / MARKER
        if marker.is_file() and not marker.is_symlink():
            for child in path.iterdir():
                if child.name == MARKER:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            return path
        if any(path.iterdir()):
            raise FlipError(
                f"{path} is not empty and was not created by {owner} (no {MARKER} in it): {owner} "
                "clears only a folder it created; give --dir an absent or empty folder"
            )
    elif path.exists() or path.is_symlink():
        raise FlipError(f"{path} exists and is not a folder: give --dir an absent or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text(_MARKER_TEXT.replace("`flip demo`", command))
    return path


def run_demo(
    sites: int = 2,
    rounds: int = 3,
    threads: int | None = None,
    workdir: str | Path = ".demo",
    percentile: float = 10,
    gamma: float = 0.01,
    job: str = JobName.STANDARD,
    aggregation: str = Aggregation.FEDAVG,
    uncertainty: str = Uncertainty.NONE,
    model_test_after_each_round: bool = False,
    dp_epsilon: float | None = None,
    dp_clip_norm: float | None = None,
    dp_level: str = "record",
) -> int:
    """Run the demo end to end; return 0 on success, 1 on failure (with the reason printed).

    ``aggregation`` (fedavg, fedprox, feddc), ``uncertainty`` (none, ensemble, mc_dropout, swag) and
    ``model_test_after_each_round`` apply to the standard, fed_opt and evaluation demos' training. With
    ``dp_epsilon``, ``dp_level`` ``record`` (default) gives every site its own record-level DP policy (DP-SGD with
    Opacus, ``local/privacy.json``), ``client`` adds the job's client-level GaussianPrivacy. Every argument
    is checked (:func:`demo_runs`) before the disk is touched; ``workdir`` is then prepared by
    :func:`prepare_workdir` (the demo clears only a folder it created).

    Raises:
        ValueError: a bad argument (named).
        FlipError: ``workdir`` is not the demo's own folder (named).
    """
    runs = demo_runs(
        sites=sites,
        rounds=rounds,
        threads=threads,
        percentile=percentile,
        gamma=gamma,
        job=job,
        aggregation=aggregation,
        uncertainty=uncertainty,
        model_test_after_each_round=model_test_after_each_round,
        dp_epsilon=dp_epsilon,
        dp_clip_norm=dp_clip_norm,
        dp_level=dp_level,
    )
    record_dp = (
        record_level_policy(dp_epsilon, dp_clip_norm) if dp_epsilon is not None and dp_level == "record" else None
    )
    started = time.monotonic()
    workdir = prepare_workdir(workdir)

    import torch

    from flip.demo.data import holdout_accuracy, write_cohorts, write_flip_cohorts
    from flip.jobs import DEMO_APP_DIR, MULTISTAGE_APP_DIR
    from flip.platform.site import SiteData
    from flip.simulate import site_names
    from flip.storage.weed import WeedS3

    names = site_names(sites)
    os.environ["FLIP_LOCAL_DIR"] = str(workdir / "flip")
    os.environ.setdefault("FLIP_ENV", "dev")
    flip_app = uses_flip_app(job, runs[0][1])
    site_data = None
    if flip_app:
        written = write_flip_cohorts(workdir / "hospitals", names)
        site_data = {site: SiteData(dataframe=csv, images=images) for site, (csv, images) in written.items()}
        counts = {site: len(csv.read_text().splitlines()) - 1 for site, (csv, _) in written.items()}
        _say(
            "hospitals' data, FLIP's dev data: a dataframe of accession ids and labels and one DICOM file per "
            "accession: " + ", ".join(f"{s} {n} digits" for s, n in counts.items()) + " (non-IID split)"
        )
    else:
        counts = write_cohorts(workdir / "flip", names)
        _say(
            "hospitals' images: "
            + ", ".join(f"{s} {n} digits" for s, n in counts.items())
            + " (non-IID split)"
            + " for flip's plain contract ("
            + (
                "the multi-stage demo"
                if job == JobName.MULTI_STAGE
                else "fedprox and swag change the local training inside it"
            )
            + ")"
        )
    app_dir = FLIP_APP_DIR if flip_app else None
    if record_dp is not None:
        app_dir = _record_level_app(workdir) if flip_app else None
        _write_site_policy(workdir / f"workspace-{runs[0][0]}", record_dp)
        _say(
            f"each site's own privacy policy: record-level DP-SGD (Opacus), ε={dp_epsilon:g} per job at δ=1e-5, "
            f"max_grad_norm {record_dp['max_grad_norm']:g}"
            + f"; the {'FLIP app' if flip_app else 'app'} trains with {RECORD_LEVEL_TRAINING}"
        )

    with WeedS3(root=workdir / "s3") as server:
        os.environ.update(server.env)
        _say(f"S3 server (SeaweedFS weed mini) on {server.endpoint}, bucket {server.bucket}, auth enforced")
        demo = _Demo(workdir, names, threads, server, site_data=site_data)
        model_id = str(uuid.uuid4())
        try:
            (train_job, train_options), *after = runs  # training, then the evaluation job if asked
            training = RECORD_LEVEL_TRAINING if record_dp is not None and not flip_app else None
            result = demo.run(train_job, model_id, app_dir=app_dir, training=training, **train_options)
            evaluation = None
            for name, options in after:
                evaluated = _evaluation_app(workdir, result["objects"][RunFile.GLOBAL_MODEL]) if flip_app else None
                evaluation = demo.run(name, model_id, app_dir=evaluated, **options)
        except FlipError as exc:
            _say(f"FAILED: {exc}")
            return 1
        objects = result["objects"]
        report_dir = workdir / RunFile.REPORT_DIR
        report_dir.mkdir()
        for key, body in objects.items():
            if key.startswith(f"{RunFile.REPORT_DIR}/"):
                (report_dir / Path(key).relative_to(RunFile.REPORT_DIR)).write_bytes(body)
        state = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), map_location="cpu", weights_only=True)
        app = MULTISTAGE_APP_DIR if job == JobName.MULTI_STAGE else FLIP_APP_DIR if flip_app else DEMO_APP_DIR
        accuracy = holdout_accuracy(state, app_dir=app)

    metrics = json.loads(objects[RunFile.METRICS])
    rounds = merged_rounds(metrics)
    validation = json.loads(objects[RunFile.CROSS_VAL_RESULTS])
    print()
    name = "accuracy" if any("accuracy" in m for r in rounds for m in r["sites"].values()) else "loss"
    print(f"{name} of each site's locally trained model on its own validation images, per round:")
    print("\n".join(_table(rounds, names, name)))
    if metrics["rounds"] and metrics["rounds"][0].get("server"):
        steps = ", ".join(f"{r['server']['step_norm']:.3g}" for r in metrics["rounds"])
        print(f"Server optimizer {metrics['rounds'][0]['server']['optimizer']}: global model moved {steps} per round")
    print()
    print("Cross-site validation of the final global model:")
    for site in names:
        m = validation.get(site, {}).get(RunFile.SERVER_MODEL, {})
        print(f"  {site}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if k != "num_samples"))
    if evaluation:
        results = json.loads(evaluation["objects"][RunFile.EVALUATION_RESULTS])
        print("Evaluation-only job, the same model on all of each site's images:")
        for site in names:
            m = results[site][EVALUATED_MODEL if flip_app else model_id]
            print(f"  {site}: accuracy {m['accuracy']:.3f} on {m['num_samples']} images")
    validated = [r for r in metrics["rounds"] if r.get("validation")]
    if validated:
        print(
            "Each new global model tested at every site (accuracy): "
            + "; ".join(
                f"round {r['round']}: "
                + ", ".join(f"{s} {m.get('accuracy', 0):.3f}" for s, m in sorted(r["validation"].items()))
                for r in validated
            )
        )
    extras = [k for k in (RunFile.ENSEMBLE, RunFile.SWAG, RunFile.UNCERTAINTY) if k in objects]
    if extras:
        print(f"Uncertainty ({uncertainty}): stored {', '.join(extras)} with the model (see flip.uncertainty)")
    if dp_epsilon is not None:
        guarantees = metrics.get("differential_privacy", {})
        spent = {s: round(g["epsilon"], 3) for s, g in guarantees.items()}
        level = "record-level (one patient)" if record_dp is not None else "client-level (a whole hospital)"
        print(
            f"Differential privacy, {level}: each site's ε spent (δ=1e-5): {spent} of {dp_epsilon:g}"
            + (f"; training stopped early {metrics['stopped_early']}" if metrics.get("stopped_early") else "")
        )
        if record_dp is None:
            print(
                f"  With {len(names)} sites the noise that ε={dp_epsilon:g} needs is on the order of the updates "
                "themselves: client-level DP costs accuracy unless there are many sites (README: differential "
                "privacy)."
            )
    print(f"Held-out digits no site ever saw: accuracy {accuracy:.3f}")
    print(f"Model:    s3://{server.bucket}/{result['prefix']}{RunFile.GLOBAL_MODEL}")
    print(
        f"Verified: {len(result['manifest']['objects'])} objects match "
        f"s3://{server.bucket}/{result['prefix']}{RunFile.MANIFEST}"
    )
    print("Status:   " + " -> ".join(s["status"] for s in result["statuses"]))
    curves = report_dir / "curves.png"
    print(f"Report:   {report_dir / 'index.html'}" + (f" (curves: {curves})" if curves.is_file() else ""))
    print(f"Logs:     {workdir}/workspace-*/server/log.txt")
    print(f"Time:     simulator {demo.run_seconds:.1f} s, whole demo {time.monotonic() - started:.1f} s")
    floor = MIN_ACCURACY if dp_epsilon is None else MIN_ACCURACY_RECORD_DP if record_dp is not None else None
    if floor is not None and accuracy < floor:
        _say(f"FAILED: held-out accuracy {accuracy:.3f} is below {floor}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
