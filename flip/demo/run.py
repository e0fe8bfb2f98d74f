"""``make demo`` / ``flip demo``: two hospitals train a digits classifier in the NVFlare simulator.

Steps: write each site's images (non-IID) -> start an embedded S3 server -> write the standard job with a new
model id -> run it in the simulator with the privacy filter on -> verify the uploaded manifest -> download the
model, score it on held-out digits -> print a summary. Exits non-zero on any failure.
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

from flip.constants import RunFile, RunStatus
from flip.errors import FlipError


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _table(metrics: dict, sites: list[str], name: str) -> list[str]:
    lines = [f"{'round':>5}  " + "  ".join(f"{s:>10}" for s in sites) + f"  {'mean':>10}"]
    for entry in metrics.get("rounds", []):
        row = [entry["sites"].get(s, {}).get(name) for s in sites] + [entry.get("global", {}).get(name)]
        lines.append(f"{entry['round']:>5}  " + "  ".join(f"{v:>10.3f}" if v is not None else f"{'-':>10}" for v in row))
    return lines


def run_demo(sites: int = 2, rounds: int = 3, threads: int | None = None, workdir: str | Path = ".demo",
             percentile: float = 10, gamma: float = 0.01) -> int:
    """Run the demo end to end; return 0 on success, 1 on failure (with the reason printed)."""
    import torch

    from flip.demo.data import holdout_accuracy, write_cohorts
    from flip.jobs import write_job
    from flip.platform.dev import LocalPlatform
    from flip.simulate import run_simulator, site_names
    from flip.storage import s3
    from flip.storage.weed import WeedS3

    started = time.monotonic()
    workdir = Path(workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    names = site_names(sites)
    local_dir = workdir / "flip"
    os.environ["FLIP_LOCAL_DIR"] = str(local_dir)
    os.environ.setdefault("FLIP_ENV", "dev")
    counts = write_cohorts(local_dir, names)
    _say("hospitals' images: " + ", ".join(f"{s} {n} digits" for s, n in counts.items()) + " (non-IID split)")

    model_id = str(uuid.uuid4())
    job_dir = write_job("standard", workdir / "jobs", model_id=model_id, num_rounds=rounds, min_clients=len(names),
                        percentile=percentile, gamma=gamma)
    _say(f"job {job_dir} (model {model_id}, {rounds} rounds, PercentilePrivacy {percentile}/{gamma})")

    with WeedS3(root=workdir / "s3") as server:
        os.environ.update(server.env)
        _say(f"S3 server (SeaweedFS weed mini) on {server.endpoint}, bucket {server.bucket}, auth enforced")
        run_started = time.monotonic()
        _say(f"running the simulator: {len(names)} sites, workspace {workdir / 'workspace'}")
        rc = run_simulator(job_dir, workdir / "workspace", sites=names, threads=threads)
        run_seconds = time.monotonic() - run_started

        statuses = LocalPlatform(local_dir).read_statuses(model_id)
        final = statuses[-1] if statuses else {}
        if rc != 0 or final.get("status") != RunStatus.RESULTS_UPLOADED.value:
            reason = final.get("reason", "see the logs")
            _say(f"FAILED: simulator exit code {rc}, final status {final.get('status')}: {reason}")
            _say(f"logs: {workdir / 'workspace' / 'server' / 'log.txt'}")
            return 1

        client = s3.make_s3_client()
        prefix = s3.run_prefix(model_id, final["run_id"])
        try:
            manifest = s3.verify_run(client, server.bucket, prefix)
            metrics = json.loads(client.get_object(Bucket=server.bucket, Key=prefix + RunFile.METRICS)["Body"].read())
            results = json.loads(client.get_object(
                Bucket=server.bucket, Key=prefix + "results/cross_val_results.json")["Body"].read())
            body = client.get_object(Bucket=server.bucket, Key=prefix + RunFile.GLOBAL_MODEL)["Body"].read()
            report_dir = workdir / "report"
            report_dir.mkdir()
            for entry in manifest["objects"]:
                if entry["key"].startswith("report/"):
                    client.download_file(server.bucket, prefix + entry["key"], str(report_dir / entry["key"][7:]))
        except FlipError as exc:
            _say(f"FAILED: {exc}")
            return 1
        state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
        accuracy = holdout_accuracy(state, site_names=names)

    print()
    print("Accuracy of each site's locally trained model on its own validation images, per round:")
    print("\n".join(_table(metrics, names, "accuracy")))
    print()
    print("Cross-site validation of the final global model:")
    for site in names:
        m = results.get(site, {}).get("SRV_FL_global_model.pt", {})
        print(f"  {site}: accuracy {m.get('accuracy', float('nan')):.3f}, loss {m.get('loss', float('nan')):.3f}")
    print(f"Held-out digits no site ever saw: accuracy {accuracy:.3f}")
    print(f"Model:    s3://{server.bucket}/{prefix}{RunFile.GLOBAL_MODEL}")
    print(f"Verified: {len(manifest['objects'])} objects match s3://{server.bucket}/{prefix}{RunFile.MANIFEST}")
    print(f"Status:   " + " -> ".join(s["status"] for s in statuses))
    print(f"Report:   {report_dir / 'index.html'} (curves: {report_dir / 'curves.png'})")
    print(f"Logs:     {workdir / 'workspace' / 'server' / 'log.txt'}")
    print(f"Time:     simulator run {run_seconds:.1f} s, whole demo {time.monotonic() - started:.1f} s")
    if accuracy < 0.8:
        _say(f"FAILED: held-out accuracy {accuracy:.3f} is below 0.8")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
