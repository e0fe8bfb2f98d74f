"""The ``flip`` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from flip.constants import (
    AGGREGATIONS,
    DEMO_JOBS,
    JOB_TYPE_CHOICES,
    UNCERTAINTY_METHODS,
    Aggregation,
    JobName,
    RunStatus,
    Uncertainty,
)
from flip.errors import FlipError


def _cmd_demo(args) -> int:
    from flip.demo.run import run_demo

    return run_demo(
        sites=args.sites,
        rounds=args.rounds,
        threads=args.threads,
        workdir=args.dir,
        percentile=args.percentile,
        gamma=args.gamma,
        job=args.job,
        aggregation=args.aggregation,
        uncertainty=args.uncertainty,
        model_test_after_each_round=args.model_test_after_each_round,
        dp_epsilon=args.dp_epsilon,
        dp_clip_norm=args.dp_clip_norm,
        dp_level=args.dp_level,
    )


def _cmd_s3_serve(args) -> int:
    from flip.files import write_private
    from flip.storage import service
    from flip.storage.weed import WeedS3

    if args.detach:
        if not args.dir:
            raise ValueError("--detach needs --dir: the folder that holds the server's data, s3.env and s3.pid")
        env_file = service.start_s3(args.dir, bucket=args.bucket)
        print(env_file.read_text(), end="")
        print(
            f"# the S3 server runs in the background: `. {env_file}` to use it, `flip s3 stop --dir "
            f"{Path(args.dir).resolve()}` to stop it"
        )
        return 0
    server = WeedS3(bucket=args.bucket, root=args.dir).start()
    lines = service.env_lines(server.env)
    print("# SeaweedFS S3 server running; use it with:")
    print("\n".join(lines))
    if args.dir:
        write_private(Path(args.dir) / service.PID_FILE, f"{os.getpid()}\n")
    if args.env_file:  # written once it serves: whoever waits for the file may use it at once
        write_private(Path(args.env_file), "\n".join(lines) + "\n")
    print(f"# pid {os.getpid()}; Ctrl-C stops it", flush=True)
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # delivered to sigwait, not fatal
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for path in ([Path(args.env_file)] if args.env_file else []) + (
            [Path(args.dir) / service.PID_FILE] if args.dir else []
        ):
            path.unlink(missing_ok=True)
    return 0


def _cmd_s3_stop(args) -> int:
    from flip.storage.service import stop_s3

    pid = stop_s3(args.dir)
    print(
        f"stopped the S3 server of {Path(args.dir).resolve()} (pid {pid})"
        if pid
        else f"no S3 server serves {Path(args.dir).resolve()}"
    )
    return 0


def _cmd_trial_data(args) -> int:
    from flip.demo.trial import write_trial_data

    counts = write_trial_data(args.sites.split(","), args.dir)
    folder = Path(args.dir).resolve()
    for site, count in counts.items():
        print(f"{site}: {count} images in {folder / 'cohorts' / site}")
    print(f"each site reads its own: start it with FLIP_LOCAL_DIR={folder}")
    return 0


def _cmd_jobs_export(args) -> int:
    import inspect
    import uuid

    from flip.checks import check_model_id
    from flip.jobs import JOBS, write_job

    options = {}
    if args.model_id or args.new_model_id:
        if args.model_id and args.new_model_id:
            raise ValueError("give --model-id UUID or --new-model-id, not both")
        if not args.names:
            raise ValueError("name the job(s) to write with a model id, e.g. flip jobs export standard --new-model-id")
        options["model_id"] = check_model_id(args.model_id) if args.model_id else str(uuid.uuid4())
    if args.num_rounds is not None:
        options["num_rounds"] = args.num_rounds
    options.update(_model_option_values(args))
    options.update(_job_options(args.option))
    for name in args.names or sorted(JOBS):
        if name in JOBS:
            parameters = dict(inspect.signature(JOBS[name]).parameters)
            if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):  # fed_opt: the standard job's too
                parameters.update(inspect.signature(JOBS[JobName.STANDARD]).parameters)
            unknown = [k for k in options if k not in parameters]
            if unknown:
                raise ValueError(f"job {name!r} takes no --{unknown[0].replace('_', '-')}")
        print(write_job(name, args.out, **options))
    if args.new_model_id:
        print(f"model id: {options['model_id']}")
    return 0


def _sites_arg(value: str | None):
    """``--sites``: a number (site-1..site-N) or comma-separated names."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value.split(",")


def _cmd_job_create(args) -> int:
    from flip.jobs.flip_app import create_job

    created = create_job(
        args.app_dir,
        args.out,
        args.job_type,
        model_id=args.model_id,
        project_id=args.project_id,
        query=args.query,
        min_clients=args.min_clients,
        rounds=args.rounds,
        sites=_sites_arg(args.sites),
        **_model_option_values(args),
    )
    print(f"job folder {created.path}")
    for line in created.plan.describe():
        print(f"  {line}")
    sites = len(created.plan.sites) or max(created.plan.min_clients, 2)
    print(
        f"run it: flip simulate {created.path} --sites {sites} [--site-data SITE=CSV:IMAGES_DIR ...]; submit it: "
        f"nvflare job submit -j {created.path}"
    )
    return 0


def _cmd_api_serve(args) -> int:
    from flip.api.serve import serve

    try:
        code = serve(
            args.admin_dir,
            host=args.host,
            port=args.port,
            username=args.username,
            insecure_loopback=args.insecure_loopback,
        )
    except (FlipError, ValueError) as exc:
        print(f"flip: error: {exc}", file=sys.stderr)
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the FLARE API's connection threads outlive its session: they must not keep the process alive


def _cmd_simulate(args) -> int:
    from flip.simulate import parse_site_data, parse_site_env, run_simulator, site_names

    site_data = parse_site_data(args.site_data, site_names(args.sites))
    site_env = parse_site_env(args.site_env, site_names(args.sites))
    return run_simulator(
        args.job,
        args.workspace,
        sites=args.sites,
        threads=args.threads,
        quiet=not args.verbose,
        site_data=site_data,
        site_env=site_env,
    )


def _cmd_upload(args) -> int:
    from flip import FLIP
    from flip.settings import load_settings
    from flip.storage.pending import resume

    settings = load_settings()
    resume(args.resume, settings, platform=FLIP(settings))
    return 0


def _when(seconds) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds is not None else " " * 15 + "now"


def _cmd_status(args) -> int:
    from flip import FLIP
    from flip.checks import check_model_id, check_number

    model_id = check_model_id(args.model_id)
    check_number("--wait", args.wait, 0)
    platform = FLIP()
    if args.resend:
        delivered = platform.resend(model_id)  # a status the hub still refuses raises (and stays recorded)
        for record in delivered:
            print(f"resent {record['status']} of run {record['run_id']} to the hub")
        if not delivered:
            print(f"nothing to resend for model {model_id}")
    statuses = platform.read_statuses(model_id)
    if args.wait:
        statuses = _wait_for_final(platform, model_id, args.wait)
    undelivered = platform.undelivered(model_id)
    if not statuses and not undelivered:
        print(f"no status recorded for model {model_id} ({platform.name} platform)")
        return 1
    runs: dict[str | None, list[dict]] = {}
    for record in statuses:
        runs.setdefault(record.get("run_id"), []).append(record)
    metrics = platform.read_metrics(model_id)
    failures = [r for r in platform.read_logs(model_id) if r.get("success") is False]
    for run_id, records in runs.items():
        print(f"run {run_id}" if run_id else f"model {model_id} on the hub (it keeps the model's current status)")
        for r in records:
            print(f"  {_when(r.get('time'))}  {r['status']}" + (f": {r['reason']}" if r.get("reason") else ""))
        for f in (f for f in failures if f.get("run_id") == run_id):
            site = f" {f['site']}:" if f.get("site") else ""
            print(f"  {_when(f.get('time'))}  failure{site} {f.get('text')}")
        mine = [m for m in metrics if m.get("run_id") == run_id]
        if mine:
            from flip.metrics import format_metrics  # imports numpy: only when there are metrics to show

            last_round = max(m["round"] for m in mine)
            print(f"  metrics of round {last_round}:")
            for m in sorted((m for m in mine if m["round"] == last_round), key=lambda m: m["site"]):
                print(f"    {m['site']:>12}: {format_metrics(m['metrics'])}")
    for record in undelivered:
        reason = f" ({record['reason']})" if record.get("reason") else ""
        print(
            f"not delivered to the hub: {record['status']}{reason} of run {record['run_id']}, recorded "
            f"{_when(record.get('time'))}: resend with `flip status {model_id} --resend`"
        )
    if args.wait:
        final = statuses[-1]["status"] if statuses else None
        if final != RunStatus.RESULTS_UPLOADED:
            state = (
                f"ended {final}" if final in FINAL_STATUSES else f"is at {final}, not finished after {args.wait:g} s"
            )
            print(f"flip: the latest run of model {model_id} {state}", file=sys.stderr)
            return 1
    return 0


FINAL_STATUSES = [RunStatus.RESULTS_UPLOADED.value, RunStatus.ERROR.value, RunStatus.STOPPED.value]


def _wait_for_final(platform, model_id: str, seconds: float) -> list[dict]:
    """The model's status records once its latest run has a final status, or when ``seconds`` have passed."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        statuses = platform.read_statuses(model_id)
        left = deadline - time.monotonic()
        if statuses and statuses[-1]["status"] in FINAL_STATUSES or left <= 0:
            return statuses
        time.sleep(min(2.0, left))


def _cmd_provision(args) -> int:
    from flip import provisioning

    chosen = [f"--{a.replace('_', '-')}" for a in ("add_site", "remove_site", "renew", "check") if getattr(args, a)]
    if len(chosen) > 1:
        raise ValueError(f"give one of --add-site, --remove-site, --renew or --check, got {' and '.join(chosen)}")
    if args.check:
        return _provision_check(args)
    if args.add_site:
        prod = provisioning.add_site(args.add_site, args.out)
        print(f"added {args.add_site}: give the hospital the kit {prod / args.add_site} (other kits are unchanged)")
    elif args.remove_site:
        before = provisioning.previous_cert(args.out, args.remove_site)
        prod = provisioning.remove_site(args.remove_site, args.out)
        admin = next(p for p in prod.iterdir() if "@" in p.name)
        print(
            f"removed {args.remove_site}: the server kit {prod / _server_kit(prod)} refuses it "
            f"({provisioning.DISABLED_CLIENTS_FILE}); a running server must be told now:\n"
            f"  nvflare system disable-client {args.remove_site} --force --startup-kit {admin}"
        )
        if before:
            print(
                f"its certificate is not revoked (NVFlare has none to revoke it): it stays valid until "
                f"{before.not_after:%Y-%m-%d}; only the server's refusal keeps it out until then"
            )
    elif args.renew:
        prod = provisioning.renew(args.out)
        print(
            f"new certificates for every participant, same root CA, in {prod}: give each its new startup/ "
            "folder (stop it, replace <kit>/startup, start it); old and new kits work together until the old "
            "certificates expire"
        )
        _print_expiry(prod)
    else:
        if not args.sites:
            raise ValueError(
                "give --sites (a number or comma-separated names), --add-site, --remove-site, --renew or --check"
            )
        sites = [f"site-{i}" for i in range(1, int(args.sites) + 1)] if args.sites.isdigit() else args.sites.split(",")
        options = {}
        for name in ("server_storage", "service_root", "service_user"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
        prod = provisioning.provision(
            sites,
            args.out,
            server=args.server,
            fed_learn_port=args.fed_port,
            admin_port=args.admin_port,
            percentile=args.percentile,
            gamma=args.gamma,
            allow_log_streaming=args.allow_log_streaming,
            server_ips=args.server_ip,
            server_names=args.server_name,
            **options,
        )
        print(f"startup kits in {prod}: " + ", ".join(sorted(p.name for p in prod.iterdir() if p.is_dir())))
        names = ", ".join([args.server, *args.server_name, *args.server_ip])
        print(
            f"sites connect to {args.server}:{args.fed_port} and admins to {args.server}:{args.admin_port}: "
            f"that name must resolve to the server at every site and admin machine (the server's certificate "
            f"names {names})"
        )
        if not args.server_storage:
            print(
                "the server keeps submitted jobs in /tmp/nvflare (NVFlare's default, lost at reboot): give "
                "--server-storage DIR for a server that runs for long"
            )
    state = provisioning.state_dir(Path(args.out).resolve(), provisioning.load_project(args.out)["name"])
    print(
        f"secrets: every private key and {state} (the root CA's private key and every participant's) are "
        "readable by you only (files 0600, folders 0700); keep that folder offline and backed up privately: "
        "--add-site, --renew and --remove-site need it"
    )
    return 0


def _server_kit(prod) -> str:
    return next(p.name for p in prod.iterdir() if (p / "startup" / "fed_server.json").is_file())


def _print_expiry(prod) -> int:
    from flip.ops.certs import expiry_report, prod_certs

    lines, action = expiry_report(prod_certs(prod))
    print("\n".join(lines))
    return action


def _provision_check(args) -> int:
    from flip.checks import check_int
    from flip.ops.certs import expiry_report
    from flip.provisioning import check_kits

    check_int("--warn-days", args.warn_days, minimum=0)
    lines, action = expiry_report(check_kits(args.out), warn_days=args.warn_days)
    print("\n".join(lines))
    if action:
        print(f"{action} certificate(s) expire within {args.warn_days} days or have expired", file=sys.stderr)
    return 1 if action else 0


def _cmd_doctor(args) -> int:
    from flip.checks import check_number, check_positive
    from flip.ops.doctor import run_doctor

    check_positive("--timeout", args.timeout)
    check_number("--wait", args.wait, 0)
    return run_doctor(args.kit, env_file=args.env_file, timeout=args.timeout, wait=args.wait)


def _cmd_privacy_ledger(args) -> int:
    from pathlib import Path

    from flip.privacy.ledger import LEDGER_FILE, PrivacyLedger, format_ledger, ledger_path

    given = Path(args.site)
    path = given if given.name == LEDGER_FILE or given.is_file() else ledger_path(given)
    if not path.parent.is_dir():
        raise ValueError(
            f"--site must be a site's workspace (its startup kit, with local/) or its ledger file, "
            f"got {args.site!r}: {path.parent} is not a folder"
        )
    ledger = PrivacyLedger(path)
    if args.json:
        print(json.dumps(ledger.read(), indent=2, sort_keys=True))
    else:
        print(format_ledger(ledger))
    return 0


def _model_options(parser: argparse.ArgumentParser) -> None:
    """The training jobs' options about their models (standard, fed_opt, multi_stage)."""
    parser.add_argument(
        "--initial-model",
        default=None,
        metavar="MODEL_ID[/RUN_ID]",
        help="start training from this registry model (default: the platform's initial model if "
        "there is one, else models.get_model())",
    )
    parser.add_argument(
        "--keep-round-models",
        action="store_true",
        default=None,
        help="keep every round's global model (flip models rounds)",
    )
    parser.add_argument(
        "--keep-best",
        nargs="?",
        const="accuracy",
        default=None,
        metavar="METRIC",
        help="keep the best global model on this per-round test metric (default accuracy): best_global_model.pt",
    )
    parser.add_argument(
        "--keep-best-mode", default=None, choices=("max", "min"), help="max (default) or min (a loss) for --keep-best"
    )


def _job_options(values: list[str] | None) -> dict:
    """``--option KEY=VALUE`` pairs: the value read as JSON (``true``, ``2``, ``0.1``, ``null``), else as text."""
    import json
    import re

    options = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
            raise ValueError(
                f"--option must be KEY=VALUE with KEY a job option name (e.g. aggregation=feddc), got {item!r}"
            )
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    return options


def _model_option_values(args) -> dict:
    """The --initial-model, --keep-round-models, --keep-best(-mode) given, as job options."""
    given = {
        "initial_model": args.initial_model,
        "keep_round_models": args.keep_round_models,
        "keep_best": args.keep_best,
        "keep_best_mode": args.keep_best_mode,
    }
    return {k: v for k, v in given.items() if v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flip", description="FLIP on NVFlare")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the demo: N hospitals train a digits model in the simulator")
    demo.add_argument(
        "--job",
        default=JobName.STANDARD,
        choices=DEMO_JOBS,
        help="the job type to show (evaluation: train with standard, then evaluate that model)",
    )
    demo.add_argument("--aggregation", default=Aggregation.FEDAVG, choices=AGGREGATIONS)
    demo.add_argument("--uncertainty", default=Uncertainty.NONE, choices=UNCERTAINTY_METHODS)
    demo.add_argument(
        "--model-test-after-each-round", action="store_true", help="every site tests each new global model"
    )
    demo.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        help="differential privacy: each site's ε over the whole training (δ=1e-5), at --dp-level",
    )
    demo.add_argument(
        "--dp-level",
        default="record",
        choices=("record", "client"),
        help="record: DP-SGD at each site under its own policy, protects each patient (default); "
        "client: the job's GaussianPrivacy, protects each hospital's whole contribution",
    )
    demo.add_argument(
        "--dp-clip-norm",
        type=float,
        default=None,
        help="L2 bound under DP: of one record's gradient (record, default 1.0) or of a site's update "
        "(client, default 1.0)",
    )
    demo.add_argument("--sites", type=int, default=2)
    demo.add_argument("--rounds", type=int, default=3)
    demo.add_argument("--threads", type=int, default=None, help="sites running at once (default: all)")
    demo.add_argument("--percentile", type=float, default=10)
    demo.add_argument("--gamma", type=float, default=0.01)
    demo.add_argument(
        "--dir",
        default=".demo",
        help="the demo's working folder: an absent or empty folder (created and marked), or one the "
        "demo made before (cleared and reused); any other folder is refused",
    )
    demo.set_defaults(func=_cmd_demo)

    s3 = sub.add_parser("s3", help="the embedded S3 server").add_subparsers(dest="s3_command", required=True)
    serve = s3.add_parser("serve", help="start SeaweedFS weed mini on 127.0.0.1 and print the env vars to use")
    serve.add_argument("--bucket", default="flip-models")
    serve.add_argument("--dir", default=None, help="data folder (default: a new temporary folder)")
    serve.add_argument(
        "--env-file",
        default=None,
        metavar="FILE",
        help="once it serves, write the export lines to FILE (0600: it holds the generated secret)",
    )
    serve.add_argument(
        "--detach",
        action="store_true",
        help="run in the background (needs --dir): print the export lines and write them to "
        "DIR/s3.env once it serves; `flip s3 stop --dir DIR` stops it",
    )
    serve.set_defaults(func=_cmd_s3_serve)
    stop = s3.add_parser("stop", help="stop the S3 server `flip s3 serve --dir DIR --detach` started")
    stop.add_argument("--dir", required=True)
    stop.set_defaults(func=_cmd_s3_stop)

    trial = sub.add_parser("trial", help="a trial network on one machine").add_subparsers(
        dest="trial_command", required=True
    )
    data = trial.add_parser("data", help="write the demo's digits as the image store of each named site")
    data.add_argument("--sites", required=True, help="comma-separated site names, as provisioned")
    data.add_argument(
        "--dir",
        required=True,
        help="the sites' FLIP_LOCAL_DIR: images go to DIR/cohorts/<site>/; an absent or empty folder, "
        "or one this command (or the demo) made before; any other folder is refused",
    )
    data.set_defaults(func=_cmd_trial_data)

    jobs = sub.add_parser("jobs", help="job folders").add_subparsers(dest="jobs_command", required=True)
    export = jobs.add_parser("export", help="write the job folders from flip/jobs")
    export.add_argument("names", nargs="*", help="jobs to write (default: all)")
    export.add_argument("--out", default="jobs")
    export.add_argument(
        "--model-id",
        default=None,
        metavar="UUID",
        help="the model id the job trains (its runs land under s3://<bucket>/<model id>/)",
    )
    export.add_argument(
        "--new-model-id",
        action="store_true",
        help="a new model id for this submission (printed): every submission its own model",
    )
    export.add_argument("--num-rounds", type=int, default=None, metavar="N", help="training rounds (standard, fed_opt)")
    _model_options(export)
    export.add_argument(
        "--option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="any option of the job builder (repeatable), e.g. aggregation=feddc, "
        "delete_local_models_after_aggregation=false, uncertainty=swag",
    )
    export.set_defaults(func=_cmd_jobs_export)

    job = sub.add_parser("job", help="a job from your app").add_subparsers(dest="job_command", required=True)
    create = job.add_parser(
        "create",
        help="a job folder from a FLIP app folder and FLIP's job type",
        description="Bundle APP_DIR (trainer.py, validator.py, models.py, config.json; evaluator.py "
        "for an evaluation) as a job of JOB_TYPE, checking the files the job type "
        "needs. The contract of each entry file (FLIP's Executor, MONAI FL's "
        "ClientAlgo, or flip's plain one) is read from its source.",
    )
    create.add_argument("app_dir")
    create.add_argument(
        "--job-type",
        default=None,
        choices=JOB_TYPE_CHOICES,
        help="FLIP's job type (multi_stage is FLIP's diffusion_model); default: config.json's job_type",
    )
    create.add_argument("--out", required=True, metavar="JOB_DIR", help="the job folder to write (new or empty)")
    create.add_argument("--model-id", default=None, help="the model's UUID (default: a new one)")
    create.add_argument("--project-id", default="", help="FLIP's project id, passed to the app")
    create.add_argument("--query", default="", help="the cohort query, passed to the app")
    create.add_argument("--min-clients", type=int, default=1, help="sites needed to start and in each round")
    create.add_argument(
        "--rounds", type=int, default=None, help="training rounds (default: config.json GLOBAL_ROUNDS, else 1)"
    )
    create.add_argument(
        "--sites",
        default=None,
        help="an evaluation's sites: a number or comma-separated names (default 2: site-1, site-2)",
    )
    _model_options(create)
    create.set_defaults(func=_cmd_job_create)

    api = sub.add_parser("api", help="the FL API: FLIP's hub drives the network over HTTP").add_subparsers(
        dest="api_command", required=True
    )
    api_serve = api.add_parser(
        "serve",
        help="serve the routes FLIP's hub calls (upload_app, submit_job, list_jobs, abort_job, "
        "check_server_status, check_client_status), next to the FL server",
        description="Serve FLIP's FL API for the FL server an admin's startup kit reaches. The key callers must send "
        "comes from FLIP_API_KEY_FILE (a file only this user reads) or FLIP_API_KEY, in the header "
        "FLIP_API_KEY_HEADER (X-Internal-Service-Key); bundle URLs may name s3://FLIP_API_BUNDLE_BUCKET "
        "or file:// under FLIP_API_BUNDLE_ROOT; FLIP_API_TRUST_SITES maps the hub's trust names to "
        "sites. See the README, 'Driving a network over HTTP'.",
    )
    api_serve.add_argument(
        "--admin-dir", required=True, metavar="STARTUP_KIT", help="an admin's startup kit (e.g. <kits>/admin@flip.org)"
    )
    api_serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (127.0.0.1)")
    api_serve.add_argument("--port", type=int, default=8000, help="the port to listen on (8000)")
    api_serve.add_argument(
        "--username", default=None, help="the admin identity (default: FLIP_API_USERNAME, else the kit's own)"
    )
    api_serve.add_argument(
        "--insecure-loopback",
        action="store_true",
        help="serve without a key: only on a loopback address, for a trial on one machine",
    )
    api_serve.set_defaults(func=_cmd_api_serve)

    simulate = sub.add_parser("simulate", help="run a job folder in the NVFlare simulator")
    simulate.add_argument("job")
    simulate.add_argument("--workspace", default="workspace")
    simulate.add_argument("--sites", type=int, default=2)
    simulate.add_argument("--threads", type=int, default=None)
    simulate.add_argument("--verbose", action="store_true", help="show NVFlare's full console log")
    simulate.add_argument(
        "--site-data",
        action="append",
        default=None,
        metavar="SITE=CSV:IMAGES_DIR",
        help="a site's own dev data for FLIP apps (repeatable): the CSV get_dataframe returns and "
        "the folder of <accession_id>/ image folders; other sites use DEV_DATAFRAME and "
        "DEV_IMAGES_DIR",
    )
    simulate.add_argument(
        "--site-env",
        action="append",
        default=None,
        metavar="SITE:VAR=VALUE",
        help="a site's own trust variable in prod (repeatable): DATA_ACCESS_API_URL, IMAGING_API_URL, "
        "NET_ID, TRUST_INTERNAL_SERVICE_KEY(_HEADER) or IMAGES_DIR, over the process's own "
        "(FLIP_SITE_ENV); no hub variable can be given to a site this way",
    )
    simulate.set_defaults(func=_cmd_simulate)
    upload = sub.add_parser("upload", help="finish a run's upload that failed (S3 down, wrong credentials...)")
    upload.add_argument(
        "--resume",
        required=True,
        metavar="PATH",
        help="a run folder with upload_pending.json, or the server (or simulator) workspace holding "
        "such run folders; the run's bucket must be FLIP_MODELS_BUCKET",
    )
    upload.set_defaults(func=_cmd_upload)

    prov = sub.add_parser(
        "provision", help="startup kits for a server, hospital sites and an admin (nvflare provision)"
    )
    prov.add_argument("--sites", default=None, help="number of sites, or comma-separated site names")
    prov.add_argument("--out", required=True, help="folder for project.yml and the kits (workspace/<project>/prod_NN)")
    prov.add_argument("--add-site", default=None, metavar="NAME", help="add one site to an existing --out")
    prov.add_argument(
        "--server",
        default="server",
        metavar="HOST",
        help="the server's DNS name, as sites and admins reach it (e.g. fl.example.org; localhost "
        "for a trial on one machine); it names the server's kit and certificate",
    )
    prov.add_argument("--fed-port", type=int, default=8002)
    prov.add_argument("--admin-port", type=int, default=8003)
    prov.add_argument("--percentile", type=float, default=10, help="the sites' enforced PercentilePrivacy")
    prov.add_argument("--gamma", type=float, default=0.01)
    prov.add_argument(
        "--allow-log-streaming",
        action="store_true",
        help="let the sites stream their job error logs to the server (default: logs stay on site; a "
        "site can opt in alone with allow_log_streaming: true on its participant in project.yml)",
    )
    prov.add_argument(
        "--server-ip",
        action="append",
        default=[],
        metavar="IP",
        help="an IPv4 address the server is also reached at (NAT, reverse proxy, no DNS): added to its "
        "certificate's names (SAN); repeat for more",
    )
    prov.add_argument(
        "--server-name",
        action="append",
        default=[],
        metavar="HOST",
        help="another DNS name of the server (e.g. a proxy's): added to its certificate's names; repeat",
    )
    prov.add_argument(
        "--server-storage",
        default=None,
        metavar="DIR",
        help="absolute folder where the server keeps submitted jobs and snapshots (default: NVFlare's "
        "/tmp/nvflare, lost at reboot)",
    )
    prov.add_argument(
        "--service-root",
        default=None,
        metavar="DIR",
        help="where the kits are installed for the systemd units: <DIR>/<name>, flip in <DIR>/venv (default /opt/flip)",
    )
    prov.add_argument("--service-user", default=None, metavar="USER", help="the user the services run as (flip)")
    prov.add_argument(
        "--remove-site",
        default=None,
        metavar="NAME",
        help="take a site out of --out: the server kit refuses it (NVFlare's disabled clients)",
    )
    prov.add_argument(
        "--renew",
        action="store_true",
        help="new certificates for every participant under the same root CA (before they expire)",
    )
    prov.add_argument(
        "--check",
        action="store_true",
        help="list each kit's certificate expiry date; exit 1 if one expires within --warn-days",
    )
    prov.add_argument("--warn-days", type=int, default=60, help="with --check: warn this many days ahead (60)")
    prov.set_defaults(func=_cmd_provision)

    doctor = sub.add_parser(
        "doctor",
        help="check a server, site or admin kit: files, keys, certificate expiry, "
        "the connection to the server, the S3 and hub settings (one line each)",
    )
    doctor.add_argument("--kit", required=True, metavar="DIR", help="the startup kit (e.g. /opt/flip/hospital-a)")
    doctor.add_argument(
        "--env-file",
        default=None,
        metavar="FILE",
        help="read the service's environment file first (e.g. /etc/flip/flip-hospital-a.env)",
    )
    doctor.add_argument("--timeout", type=float, default=5.0, help="seconds per connection attempt")
    doctor.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="retry while a check fails, up to this long (a service that is starting)",
    )
    doctor.set_defaults(func=_cmd_doctor)

    status = sub.add_parser(
        "status",
        help="a model's run status lifecycle, failures and latest metrics (dev: the "
        "local files; prod: the hub, with FLIP_HUB_USER_TOKEN)",
    )
    status.add_argument("model_id")
    status.add_argument(
        "--resend",
        action="store_true",
        help="first send the hub every final status of this model it did not take (the server's "
        "record in FLIP_LOCAL_DIR)",
    )
    status.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait until the model's latest run ends (up to SECONDS), then show it; exit 1 unless it "
        "ended RESULTS_UPLOADED",
    )
    status.set_defaults(func=_cmd_status)

    privacy = sub.add_parser("privacy", help="a site's differential privacy").add_subparsers(
        dest="privacy_command", required=True
    )
    ledger = privacy.add_parser(
        "ledger",
        help="the ε each job spent on each of a site's data sets, what is left "
        "(<site workspace>/local/privacy_ledger.json)",
    )
    ledger.add_argument(
        "--site",
        default=".",
        metavar="DIR",
        help="the site's workspace (its startup kit folder, with local/) or its ledger file "
        "(default: the current folder)",
    )
    ledger.add_argument("--json", action="store_true", help="print the ledger file itself")
    ledger.set_defaults(func=_cmd_privacy_ledger)

    from flip.models_cli import add_models_parser

    add_models_parser(sub)
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
