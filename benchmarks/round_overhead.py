"""What a whole run costs with our components, against stock NVFlare, side by side in one run of this script.

For each model size (float32 parameters, square Linear layers; training kept to one SGD step on 4 samples so the
framework's cost dominates), 2 sites × 3 rounds in NVFlare's simulator (each site in its own thread):

- stock: NVFlare's own ``FedAvgRecipe`` (its FedAvg workflow, PTFileModelPersistor) with the same training code
  through NVFlare's Client API sending weight differences, plus its final global evaluation at every site; no flip
  component;
- ours: the standard job (``flip.jobs.standard_job``: InitTraining, rounds with the PercentilePrivacy filter and the
  sample-weighted aggregator with its checks, cross-site validation of the global model, then metrics, report,
  upload to S3 and verification), per-round tests off (stock has none);
- stock 0.5 s: the stock job with the one server setting our jobs change (``task_request_interval`` 0.5 s instead of
  NVFlare's 2 s: how soon a site with no task asks again), so the ratio against it is what our components cost.

Each run is a fresh child process; wall time is the child's, memory the sum of the resident memory of the child
and every process under it (sampled every 0.1 s; the S3 server, shared, is not counted). Last lines, one per size:
``round_overhead params=N ratio_vs_stock=X peak_rss_ratio=Y ratio_vs_stock_same_interval=Z``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simbench import (
    gb,
    our_job_folder,
    run_child,
    simulate,
    stock_job_folder,
    summary,
    temp_dir,
    write_app,
    write_cohorts,  # noqa: E402
)

from flip.jobs.common import TASK_REQUEST_INTERVAL  # noqa: E402

MODEL_ID = "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90"
SIZES = (1_000_000, 25_000_000, 100_000_000)


def child(args) -> None:
    """One simulator run (in this fresh process); print its exit code as JSON."""
    rc = simulate(Path(args.job), Path(args.workspace), args.sites)
    print(json.dumps({"rc": rc}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from flip.storage.weed import WeedS3

    lines = []
    with temp_dir("round_overhead-") as tmp, WeedS3(root=Path(tmp) / "weed") as server:
        tmp = Path(tmp)
        local = tmp / "flip"
        write_cohorts(local, [f"site-{i}" for i in range(1, args.sites + 1)])
        env = {**server.env, "FLIP_LOCAL_DIR": str(local), "FLIP_ENV": "dev"}
        exclude = {server.pid} if server.pid else set()
        for size in args.sizes:
            folder = tmp / f"p{size}"
            app, params = write_app(folder / "app", size)
            stock_dir = stock_job_folder(folder / "jobs", app, args.sites, args.rounds)
            stock_fast_dir = stock_job_folder(
                folder / "jobs", app, args.sites, args.rounds, TASK_REQUEST_INTERVAL, name="bench_stock_fast"
            )
            ours_dir = our_job_folder(
                folder / "jobs", app, args.sites, args.rounds, MODEL_ID, model_test_after_each_round=False
            )
            measured = {}
            for name, job in (("stock", stock_dir), ("stock 0.5 s", stock_fast_dir), ("ours", ours_dir)):
                workspace = folder / f"ws_{name.replace(' ', '_')}"
                measured[name] = run_child(
                    [
                        str(Path(__file__).resolve()),
                        "--child",
                        "--job",
                        str(job),
                        "--workspace",
                        str(workspace),
                        "--sites",
                        str(args.sites),
                    ],
                    env=env,
                    exclude=exclude,
                )
                print(f"params={params} {summary(name, measured[name])}", flush=True)
                failed = measured[name].rc != 0 or measured[name].result.get("rc") != 0
                if failed and name == "stock 0.5 s":
                    # NVFlare's own race, not ours: a site fetching its first task 0.5 s after a TRY_AGAIN can start
                    # the model's download before its job cell is connected ("no connection to parent"); our jobs'
                    # first task (init_training) carries no model
                    print(f"params={params} stock 0.5 s failed (rc {measured[name].result.get('rc')}): not compared")
                    measured.pop(name)
                    continue
                if failed:
                    kept = Path(tempfile.mkdtemp(prefix="round_overhead-failed-"))
                    shutil.copytree(workspace, kept / "workspace", symlinks=True)
                    sys.exit(f"{name} run failed at params={params} (rc {measured[name].rc}): its workspace is {kept}")
            stock, ours = measured["stock"], measured["ours"]
            server_ratio = ours.role_peak("server") / max(stock.role_peak("server"), 1)
            print(
                f"params={params} server peak: ours {gb(ours.role_peak('server'))} GB, stock "
                f"{gb(stock.role_peak('server'))} GB, ratio {server_ratio:.2f}",
                flush=True,
            )
            lines.append(
                f"round_overhead params={params} ratio_vs_stock={ours.seconds / stock.seconds:.3f} "
                f"peak_rss_ratio={ours.peak_rss / stock.peak_rss:.3f} "
                + (
                    f"ratio_vs_stock_same_interval={ours.seconds / measured['stock 0.5 s'].seconds:.3f}"
                    if "stock 0.5 s" in measured
                    else "ratio_vs_stock_same_interval=nan"
                )
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
