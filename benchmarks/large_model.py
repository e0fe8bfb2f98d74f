"""A 1 GB model end to end: the standard job with a 250M-parameter float32 model, 2 sites × 2 rounds, in the
simulator on one machine.

The model goes out to both sites, each trains one step and sends its difference through the PercentilePrivacy filter,
the server averages them, validates the final model at both sites, and uploads it to S3 (a local ``weed mini``),
where this script verifies the run against its manifest. NVFlare moves the 1 GB messages with its own streaming
(SFM streams every message in chunks; nothing to configure below its 2 GB default message limit). Reported: wall time,
the peak of the summed resident memory of the simulator's processes (sampled every 0.1 s; the S3 server is not
counted) and each process's own peak, and the upload + verification time from the server's log. Last line:
``large_model params=250000000 seconds=S peak_rss_gb=G``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simbench import GB, gb, our_job_folder, run_child, simulate, summary, temp_dir, write_app, write_cohorts  # noqa

MODEL_ID = "5a7e2b9c-1d4f-4e8a-9b3c-6f0d2e1a7c55"
PARAMS = 250_000_000
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def child(args) -> None:
    rc = simulate(Path(args.job), Path(args.workspace), args.sites)
    print(json.dumps({"rc": rc}))


def upload_seconds(workspace: Path) -> float | None:
    """Seconds from the server's "uploading N objects" line to its "verified" line (upload + verification)."""
    for log in workspace.rglob("log.txt"):
        start = end = None
        for line in log.read_text(errors="replace").splitlines():
            stamp = STAMP.search(line)
            if not stamp:
                continue
            if "uploading " in line and " objects to s3://" in line:
                start = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
            elif start and "verified s3://" in line:
                end = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if start and end:
            return (end - start).total_seconds()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=PARAMS)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from flip.storage.client import make_s3_client
    from flip.storage.manifest import verify_run
    from flip.storage.weed import WeedS3

    with temp_dir("large_model-") as tmp, WeedS3(root=Path(tmp) / "weed") as server:
        tmp = Path(tmp)
        local = tmp / "flip"
        write_cohorts(local, [f"site-{i}" for i in range(1, args.sites + 1)])
        app, params = write_app(tmp / "app", args.params)
        job = our_job_folder(tmp / "jobs", app, args.sites, args.rounds, MODEL_ID, model_test_after_each_round=False)
        env = {**server.env, "FLIP_LOCAL_DIR": str(local), "FLIP_ENV": "dev"}
        workspace = tmp / "ws"
        measured = run_child(
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
            exclude={server.pid} if server.pid else set(),
        )
        print(f"params={params} {summary('ours', measured)}")
        for name, peak in sorted(measured.per_process.items(), key=lambda kv: -kv[1])[:6]:
            print(f"  process {name}: peak {gb(peak)} GB ({peak / (params * 4):.1f} model sizes)")
        if measured.rc != 0 or measured.result.get("rc") != 0:
            sys.exit(f"the run failed: see {workspace}")
        import os

        os.environ.update(server.env)
        client = make_s3_client()
        listing = client.list_objects_v2(Bucket=server.bucket, Prefix=f"{MODEL_ID}/").get("Contents", [])
        runs = sorted({o["Key"].split("/")[1] for o in listing})
        if len(runs) != 1:
            sys.exit(f"expected one run under {MODEL_ID}/ in S3, found {runs}")
        manifest = verify_run(client, server.bucket, f"{MODEL_ID}/{runs[0]}/")
        model = next(e for e in manifest["objects"] if e["key"] == "global_model.pt")
        if model["size"] < params * 4:
            sys.exit(f"global_model.pt is {model['size']} bytes: less than {params} float32 parameters")
        upload = upload_seconds(workspace)
        print(
            f"S3: run {runs[0]} verified against its manifest, global_model.pt {model['size'] / GB:.2f} GB; "
            f"upload + verification {upload if upload is None else round(upload, 1)} s"
        )
        print(f"large_model params={params} seconds={measured.seconds:.1f} peak_rss_gb={measured.peak_rss / GB:.2f}")


if __name__ == "__main__":
    main()
