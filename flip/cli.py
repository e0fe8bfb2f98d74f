"""The ``flip`` command."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys

from flip.constants import (
    AGGREGATIONS,
    DEMO_JOBS,
    JOB_TYPE_CHOICES,
    UNCERTAINTY_METHODS,
    Aggregation,
    JobName,
    RunFile,
    Uncertainty,
)
from flip.errors import FlipError


def _cmd_demo(args) -> int:
    from flip.demo.run import run_demo

    return run_demo(sites=args.sites, rounds=args.rounds, threads=args.threads, workdir=args.dir,
                    percentile=args.percentile, gamma=args.gamma, job=args.job, aggregation=args.aggregation,
                    uncertainty=args.uncertainty, model_test_after_each_round=args.model_test_after_each_round,
                    dp_epsilon=args.dp_epsilon, dp_clip_norm=args.dp_clip_norm)


def _cmd_s3_serve(args) -> int:
    from flip.storage.weed import WeedS3

    server = WeedS3(bucket=args.bucket, root=args.dir).start()
    print("# SeaweedFS S3 server running; use it with:")
    for key, value in server.env.items():
        print(f"export {key}={shlex.quote(value)}")
    print(f"# pid {server.pid}; Ctrl-C stops it", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _cmd_jobs_export(args) -> int:
    from flip.jobs import JOBS, write_job

    for name in args.names or sorted(JOBS):
        print(write_job(name, args.out))
    return 0


def _sites_arg(value: str | None):
    """``--sites``: a number (site-1..site-N) or comma-separated names."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value.split(",")


def _cmd_job_create(args) -> int:
    from flip.jobs.flip_app import create_job

    created = create_job(args.app_dir, args.out, args.job_type, model_id=args.model_id, project_id=args.project_id,
                         query=args.query, min_clients=args.min_clients, rounds=args.rounds,
                         sites=_sites_arg(args.sites))
    print(f"job folder {created.path}")
    for line in created.plan.describe():
        print(f"  {line}")
    sites = len(created.plan.sites) or max(created.plan.min_clients, 2)
    print(f"run it: flip simulate {created.path} --sites {sites} [--site-data SITE=CSV:IMAGES_DIR ...]; submit it: "
          f"nvflare job submit -j {created.path}")
    return 0


def _cmd_simulate(args) -> int:
    from flip.simulate import parse_site_data, run_simulator, site_names

    site_data = parse_site_data(args.site_data, site_names(args.sites))
    return run_simulator(args.job, args.workspace, sites=args.sites, threads=args.threads, quiet=not args.verbose,
                         site_data=site_data)


def _cmd_upload(args) -> int:
    from flip import FLIP
    from flip.settings import load_settings
    from flip.storage.pending import resume

    settings = load_settings()
    resume(args.resume, settings, platform=FLIP(settings))
    return 0


def _registry(args):
    from flip.storage.registry import ModelRegistry

    return ModelRegistry(bucket=args.bucket)


def _cmd_models_list(args) -> int:
    registry = _registry(args)
    ids = registry.model_ids()
    if not ids:
        print(f"no models in s3://{registry.bucket}")
        return 0
    print(f"{'model id':36}  {'runs':>9}  latest verified run")
    for model_id in ids:
        runs = registry.runs(model_id)
        verified = [r for r in runs if r.verified]
        latest = f"{verified[-1].run_id} ({verified[-1].created})" if verified else "-"
        print(f"{model_id:36}  {len(verified):>3} of {len(runs):<3}  {latest}")
    return 0


def _cmd_models_show(args) -> int:
    import json

    print(json.dumps(_registry(args).show(args.model_id), indent=2))
    return 0


def _cmd_models_download(args) -> int:
    registry = _registry(args)
    if args.report:
        path = registry.download_report(args.model_id, args.job, args.report)
    else:
        path = registry.download(args.model_id, args.job, args.output, artifact=args.artifact)
    print(path)
    return 0


def _cmd_models_remove(args) -> int:
    if not args.yes:
        print(f"flip: removing model {args.model_id} deletes all its runs; add --yes to confirm", file=sys.stderr)
        return 2
    print(f"removed {_registry(args).remove(args.model_id)} objects of model {args.model_id}")
    return 0


def _cmd_status(args) -> int:
    import time

    from flip import FLIP
    from flip.checks import check_model_id

    model_id = check_model_id(args.model_id)
    platform = FLIP()
    statuses = platform.read_statuses(model_id)
    if not statuses:
        print(f"no status recorded for model {model_id} ({platform.name} platform)")
        return 1
    runs: dict[str, list[dict]] = {}
    for record in statuses:
        runs.setdefault(record["run_id"], []).append(record)
    metrics = platform.read_metrics(model_id)
    for run_id, records in runs.items():
        print(f"run {run_id}")
        for r in records:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"]))
            print(f"  {when}  {r['status']}" + (f": {r['reason']}" if r.get("reason") else ""))
        mine = [m for m in metrics if m["run_id"] == run_id]
        if mine:
            from flip.metrics import format_metrics  # imports numpy: only when there are metrics to show

            last_round = max(m["round"] for m in mine)
            print(f"  metrics of round {last_round}:")
            for m in sorted((m for m in mine if m["round"] == last_round), key=lambda m: m["site"]):
                print(f"    {m['site']:>12}: {format_metrics(m['metrics'])}")
    return 0


def _cmd_provision(args) -> int:
    from flip.provisioning import add_site, provision

    if args.add_site:
        prod = add_site(args.add_site, args.out)
        print(f"added {args.add_site}: give the hospital the kit {prod / args.add_site} (other kits are unchanged)")
        return 0
    if not args.sites:
        raise ValueError("give --sites (a number or comma-separated names) or --add-site NAME")
    sites = [f"site-{i}" for i in range(1, int(args.sites) + 1)] if args.sites.isdigit() else args.sites.split(",")
    prod = provision(sites, args.out, server=args.server, fed_learn_port=args.fed_port, admin_port=args.admin_port,
                     percentile=args.percentile, gamma=args.gamma, allow_log_streaming=args.allow_log_streaming)
    print(f"startup kits in {prod}: " + ", ".join(sorted(p.name for p in prod.iterdir() if p.is_dir())))
    print(f"sites connect to {args.server}:{args.fed_port} and admins to {args.server}:{args.admin_port}: "
          f"that name must resolve to the server at every site and admin machine")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flip", description="FLIP on NVFlare")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the demo: N hospitals train a digits model in the simulator")
    demo.add_argument("--job", default=JobName.STANDARD, choices=DEMO_JOBS,
                      help="the job type to show (evaluation: train with standard, then evaluate that model)")
    demo.add_argument("--aggregation", default=Aggregation.FEDAVG, choices=AGGREGATIONS)
    demo.add_argument("--uncertainty", default=Uncertainty.NONE, choices=UNCERTAINTY_METHODS)
    demo.add_argument("--model-test-after-each-round", action="store_true",
                      help="every site tests each new global model")
    demo.add_argument("--dp-epsilon", type=float, default=None,
                      help="client-level differential privacy: each site's ε over the whole training (δ=1e-5)")
    demo.add_argument("--dp-clip-norm", type=float, default=1.0, help="L2 bound of a site's update under DP")
    demo.add_argument("--sites", type=int, default=2)
    demo.add_argument("--rounds", type=int, default=3)
    demo.add_argument("--threads", type=int, default=None, help="sites running at once (default: all)")
    demo.add_argument("--percentile", type=float, default=10)
    demo.add_argument("--gamma", type=float, default=0.01)
    demo.add_argument("--dir", default=".demo",
                      help="the demo's working folder: an absent or empty folder (created and marked), or one the "
                           "demo made before (cleared and reused); any other folder is refused")
    demo.set_defaults(func=_cmd_demo)

    s3 = sub.add_parser("s3", help="the embedded S3 server").add_subparsers(dest="s3_command", required=True)
    serve = s3.add_parser("serve", help="start SeaweedFS weed mini on 127.0.0.1 and print the env vars to use")
    serve.add_argument("--bucket", default="flip-models")
    serve.add_argument("--dir", default=None, help="data folder (default: a new temporary folder)")
    serve.set_defaults(func=_cmd_s3_serve)

    jobs = sub.add_parser("jobs", help="job folders").add_subparsers(dest="jobs_command", required=True)
    export = jobs.add_parser("export", help="write the job folders from flip/jobs")
    export.add_argument("names", nargs="*", help="jobs to write (default: all)")
    export.add_argument("--out", default="jobs")
    export.set_defaults(func=_cmd_jobs_export)

    job = sub.add_parser("job", help="a job from your app").add_subparsers(dest="job_command", required=True)
    create = job.add_parser("create", help="a job folder from a FLIP app folder and FLIP's job type",
                            description="Bundle APP_DIR (trainer.py, validator.py, models.py, config.json; evaluator.py "
                                        "for an evaluation) as a job of JOB_TYPE, checking the files the job type "
                                        "needs. The contract of each entry file (FLIP's Executor, MONAI FL's "
                                        "ClientAlgo, or flip's plain one) is read from its source.")
    create.add_argument("app_dir")
    create.add_argument("--job-type", default=None, choices=JOB_TYPE_CHOICES,
                        help="FLIP's job type (multi_stage is FLIP's diffusion_model); default: config.json's "
                             "job_type")
    create.add_argument("--out", required=True, metavar="JOB_DIR", help="the job folder to write (new or empty)")
    create.add_argument("--model-id", default=None, help="the model's UUID (default: a new one)")
    create.add_argument("--project-id", default="", help="FLIP's project id, passed to the app")
    create.add_argument("--query", default="", help="the cohort query, passed to the app")
    create.add_argument("--min-clients", type=int, default=1, help="sites needed to start and in each round")
    create.add_argument("--rounds", type=int, default=None,
                        help="training rounds (default: config.json GLOBAL_ROUNDS, else 1)")
    create.add_argument("--sites", default=None,
                        help="an evaluation's sites: a number or comma-separated names (default 2: site-1, site-2)")
    create.set_defaults(func=_cmd_job_create)

    simulate = sub.add_parser("simulate", help="run a job folder in the NVFlare simulator")
    simulate.add_argument("job")
    simulate.add_argument("--workspace", default="workspace")
    simulate.add_argument("--sites", type=int, default=2)
    simulate.add_argument("--threads", type=int, default=None)
    simulate.add_argument("--verbose", action="store_true", help="show NVFlare's full console log")
    simulate.add_argument("--site-data", action="append", default=None, metavar="SITE=CSV:IMAGES_DIR",
                          help="a site's own dev data for FLIP apps (repeatable): the CSV get_dataframe returns and "
                               "the folder of <accession_id>/ image folders; other sites use DEV_DATAFRAME and "
                               "DEV_IMAGES_DIR")
    simulate.set_defaults(func=_cmd_simulate)
    upload = sub.add_parser("upload", help="finish a run's upload that failed (S3 down, wrong credentials...)")
    upload.add_argument("--resume", required=True, metavar="PATH",
                        help="a run folder with upload_pending.json, or the server (or simulator) workspace holding "
                             "such run folders; the run's bucket must be FLIP_MODELS_BUCKET")
    upload.set_defaults(func=_cmd_upload)

    prov = sub.add_parser("provision", help="startup kits for a server, hospital sites and an admin (nvflare provision)")
    prov.add_argument("--sites", default=None, help="number of sites, or comma-separated site names")
    prov.add_argument("--out", required=True, help="folder for project.yml and the kits (workspace/<project>/prod_NN)")
    prov.add_argument("--add-site", default=None, metavar="NAME", help="add one site to an existing --out")
    prov.add_argument("--server", default="server", metavar="HOST",
                      help="the server's DNS name, as sites and admins reach it (e.g. fl.example.org; localhost "
                           "for a trial on one machine); it names the server's kit and certificate")
    prov.add_argument("--fed-port", type=int, default=8002)
    prov.add_argument("--admin-port", type=int, default=8003)
    prov.add_argument("--percentile", type=float, default=10, help="the sites' enforced PercentilePrivacy")
    prov.add_argument("--gamma", type=float, default=0.01)
    prov.add_argument("--allow-log-streaming", action="store_true",
                      help="let the sites stream their job error logs to the server (default: logs stay on site; a "
                           "site can opt in alone with allow_log_streaming: true on its participant in project.yml)")
    prov.set_defaults(func=_cmd_provision)

    status = sub.add_parser("status", help="a model's run status lifecycle and latest metrics")
    status.add_argument("model_id")
    status.set_defaults(func=_cmd_status)

    models = sub.add_parser("models", help="the model registry (verified runs only are served)")
    models.add_argument("--bucket", default=None, help="default: FLIP_MODELS_BUCKET")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="every model and its verified runs").set_defaults(func=_cmd_models_list)
    show = msub.add_parser("show", help="a model's runs, rounds, sites, final metrics and sizes")
    show.add_argument("model_id")
    show.set_defaults(func=_cmd_models_show)
    download = msub.add_parser("download", help="the global model (or another artifact, or the report) of the latest "
                                                "(or a given) verified run, checked against its manifest")
    download.add_argument("model_id")
    download.add_argument("--job", default=None, help="run id (default: the latest verified run)")
    download.add_argument("-o", "--output", default=None,
                          help="file to write, or an existing folder to write the artifact's file name into")
    download.add_argument("--artifact", default=RunFile.GLOBAL_MODEL, metavar="KEY",
                          help="another object of the run, e.g. best_global_model.pt, metrics.json, swag.pt, "
                               f"{RunFile.CROSS_VAL_RESULTS} (flip models show lists them)")
    download.add_argument("--report", default=None, metavar="DIR",
                          help="instead: the run report (index.html and its curves) into DIR")
    download.set_defaults(func=_cmd_models_download)
    remove = msub.add_parser("remove", help="delete a model and all its runs")
    remove.add_argument("model_id")
    remove.add_argument("--yes", action="store_true", help="confirm")
    remove.set_defaults(func=_cmd_models_remove)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FlipError, ValueError) as exc:
        print(f"flip: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `flip status ... | head`: the reader has gone, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())

