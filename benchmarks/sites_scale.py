"""How the demo's run time grows with sites: the demo job (the FLIP app, standard job, 3 rounds) with 2 and with 8
sites, every site in its own simulator thread (``-t`` = sites), the same data at every site.

Each site gets the same amount of data: the demo's digits are split once for two hospitals and site-k is given the
data of hospital ((k - 1) mod 2) + 1, so 8 sites train on 8 datasets of the 2-site run's size. Each run is a fresh
child process; the time is the simulator run (job start to its end, upload and verification included), measured
around the same call as ``flip demo`` makes. Last line: ``sites_scale ratio_8_vs_2=R``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simbench import run_child, summary, temp_dir  # noqa: E402


def child(args) -> None:
    """One demo run with ``args.sites`` sites in ``args.workdir``; print its simulator seconds as JSON."""
    from flip.constants import JobName
    from flip.demo.data import write_flip_cohorts
    from flip.demo.run import FLIP_APP_DIR, _Demo, demo_runs
    from flip.platform.site import SiteData
    from flip.simulate import site_names
    from flip.storage.weed import WeedS3

    workdir = Path(args.workdir)
    names = site_names(args.sites)
    written = write_flip_cohorts(workdir / "hospitals", ["site-1", "site-2"])
    data = [SiteData(dataframe=csv, images=images) for csv, images in written.values()]
    site_data = {site: data[i % 2] for i, site in enumerate(names)}
    os.environ["FLIP_LOCAL_DIR"] = str(workdir / "flip")
    os.environ.setdefault("FLIP_ENV", "dev")
    (job, options), *_ = demo_runs(sites=args.sites, rounds=args.rounds, threads=args.sites)
    assert job == JobName.STANDARD
    with WeedS3(root=workdir / "s3") as server:
        os.environ.update(server.env)
        demo = _Demo(workdir, names, args.sites, server, site_data=site_data)
        demo.run(job, str(uuid.uuid4()), app_dir=FLIP_APP_DIR, **options)
    print(json.dumps({"seconds": demo.run_seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sites", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    seconds = {}
    with temp_dir("sites_scale-") as tmp:
        for sites in (2, 8):
            measured = run_child(
                [
                    str(Path(__file__).resolve()),
                    "--child",
                    "--sites",
                    str(sites),
                    "--rounds",
                    str(args.rounds),
                    "--workdir",
                    str(Path(tmp) / f"s{sites}"),
                ]
            )
            if measured.rc != 0 or "seconds" not in measured.result:
                sys.exit(f"the {sites}-site demo failed (exit code {measured.rc})")
            seconds[sites] = measured.result["seconds"]
            print(f"sites={sites}: simulator run {seconds[sites]:.1f} s; {summary('demo', measured)}", flush=True)
    print(f"sites_scale ratio_8_vs_2={seconds[8] / seconds[2]:.3f}")


if __name__ == "__main__":
    main()
