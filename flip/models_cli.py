"""``flip models ...``: the model registry's commands (the DLR demonstrator's registry operations).

Every command reads only verified runs (flip.storage.registry). A bad input (an unknown id, a malformed file, a
wrong shape) is a FlipError or ValueError naming it: ``flip`` prints it and exits 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from flip.constants import RunFile, RunStatus

FINAL = {RunStatus.RESULTS_UPLOADED.value, RunStatus.ERROR.value, RunStatus.STOPPED.value}


def _registry(args):
    from flip.storage.registry import ModelRegistry

    return ModelRegistry(bucket=args.bucket)


def _json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _statuses(model_id: str) -> list[dict]:
    """The platform's status records of a model (dev: FLIP_LOCAL_DIR; prod: the hub)."""
    from flip import FLIP

    return FLIP().read_statuses(model_id)


def latest_status(model_id: str) -> str:
    """The model's latest status on the platform, ``-`` if none, ``?`` if the platform cannot be read."""
    from flip.errors import FlipError

    try:
        statuses = _statuses(model_id)
    except (FlipError, OSError, ValueError):
        return "?"
    return statuses[-1]["status"] if statuses else "-"


def runs_in_progress(model_id: str) -> list[str]:
    """The runs of the model whose latest status on the platform is not final (a run is using the model)."""
    latest: dict[str, str] = {}
    for record in _statuses(model_id):
        latest[str(record.get("run_id"))] = record.get("status")
    return sorted(run for run, status in latest.items() if status not in FINAL)


def cmd_list(args) -> int:
    registry = _registry(args)
    ids = registry.model_ids()
    if not ids:
        print(f"no models in s3://{registry.bucket}")
        return 0
    rows = [{**registry.summary(model_id), "status": latest_status(model_id)} for model_id in ids]
    if args.json:
        _json(rows)
        return 0
    print(f"{'model id':36}  {'name':20}  {'owner':12}  {'runs':>9}  {'status':16}  latest verified run")
    for r in rows:
        latest = f"{r['latest_run']} ({r['latest_created']})" if r["latest_run"] else "-"
        print(
            f"{r['model_id']:36}  {(r['name'] or '-')[:20]:20}  {(r['owner'] or '-')[:12]:12}  "
            f"{r['verified_runs']:>3} of {r['runs']:<3}  {r['status']:16}  {latest}"
        )
    return 0


def cmd_show(args) -> int:
    from flip.storage.model_files import human_count, shape_text

    info = _registry(args).show(args.model_id)
    if args.json:
        _json(info)
        return 0
    pre = info.get("preprocessing")
    initial = info.get("initial_model") or {}
    lines = [
        ("model", info["model_id"]),
        ("name", info.get("name") or "-"),
        ("description", info.get("description") or "-"),
        ("owner", info.get("owner") or "-"),
        ("created", info.get("created") or "-"),
        ("parameters", human_count(info.get("parameter_count"))),
        ("input shape", shape_text(info.get("input_shape"))),
        ("output shape", shape_text(info.get("output_shape"))),
        ("rounds", info.get("rounds") if info.get("rounds") is not None else "-"),
        ("sites", ", ".join(info.get("sites") or []) or "-"),
        (
            "started from",
            initial.get("source", "-")
            if not initial.get("model_id")
            else f"registry model {initial['model_id']} run {initial.get('run_id')}",
        ),
        (
            "preprocessing",
            f"{pre.get('format')}, input {shape_text(pre.get('input_shape'))} -> {shape_text(pre.get('output_shape'))}"
            if isinstance(pre, dict)
            else "none",
        ),
        ("latest run", info.get("latest_run") or "- (no verified run)"),
    ]
    for label, value in lines:
        print(f"{label + ':':14} {value}")
    summary = info.get("metrics")
    if summary:
        print(f"{'metrics:':14} round {summary['round']} of run {summary['run_id']}")
        if summary.get("sites_mean"):
            print(f"  sites' mean:   {_metrics_text(summary['sites_mean'])}")
        for site, metrics in sorted((summary.get("global_model_tests") or {}).items()):
            print(f"  {site} test:  {_metrics_text(metrics)}")
    print(f"{'runs:':14} {sum(r['verified'] for r in info['runs'])} verified of {len(info['runs'])}")
    for run in info["runs"]:
        state = "verified" if run["verified"] else f"NOT SERVED: {run.get('problem')}"
        print(f"  {run['run_id']}  {run['created'] or '-'}  {run['bytes']} bytes  {state}")
    return 0


def _metrics_text(metrics: dict) -> str:
    return (
        ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in sorted(metrics.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        or "-"
    )


def cmd_metrics(args) -> int:
    table = _registry(args).metrics_rows(args.model_id, args.job)
    if args.json:
        _json(table)
        return 0
    rows = table["rows"]
    names = sorted(
        {k for r in rows for k, v in r["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )
    print(f"model {table['model_id']} run {table['run_id']}")
    width = max([8] + [len(r["reporter"]) for r in rows])
    print(f"{'round':>5}  {'reporter':{width}}  {'kind':5}  " + "  ".join(f"{n:>12}" for n in names))
    for r in rows:
        cells = []
        for n in names:
            v = r["metrics"].get(n)
            cells.append(f"{v:>12.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{'-':>12}")
        print(f"{r['round']:>5}  {r['reporter']:{width}}  {r['kind']:5}  " + "  ".join(cells))
    if not rows:
        print("no metrics recorded")
    return 0


def cmd_rounds(args) -> int:
    kept = _registry(args).round_models(args.model_id, args.job)
    if args.json:
        _json(kept)
        return 0
    print(f"model {kept['model_id']} run {kept['run_id']}")
    if kept["rounds"]:
        print("per-round global models (flip models download MODEL_ID --round N):")
        for r in kept["rounds"]:
            print(f"  round {r['round']:>3}  {r['key']}  {r['bytes']} bytes")
    else:
        print("no per-round global models (the job did not keep them: keep_round_models)")
    local = kept["local_models"]
    if local["sites"]:
        print(f"local models of round {local['round']} (flip models download MODEL_ID --local SITE):")
        for s in local["sites"]:
            print(f"  {s['site']:>12}  {s['key']}  {s['bytes']} bytes")
    else:
        print("no local models (the job deleted them after aggregation: delete_local_models_after_aggregation)")
    return 0


def cmd_preprocessing(args) -> int:
    path = _registry(args).download_preprocessing(args.model_id, args.job, args.output)
    if path is None:
        print(f"model {args.model_id} has no preprocessing model (none was uploaded with it)", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_download(args) -> int:
    from flip.storage.layout import local_model_key, round_model_key

    chosen = [
        name
        for name, value in (
            ("--best", args.best),
            ("--round", args.round is not None),
            ("--local", args.local is not None),
            ("--report", args.report is not None),
            ("--artifact", args.artifact is not None),
        )
        if value
    ]
    if len(chosen) > 1:
        raise ValueError(f"give one of --best, --round, --local, --report, --artifact, got {' and '.join(chosen)}")
    registry = _registry(args)
    if args.report:
        print(registry.download_report(args.model_id, args.job, args.report))
        return 0
    artifact = args.artifact or RunFile.GLOBAL_MODEL
    if args.best:
        artifact = RunFile.BEST_MODEL
    elif args.round is not None:
        if not isinstance(args.round, int) or args.round < 1:
            raise ValueError(f"--round must be a round number >= 1, got {args.round!r}")
        artifact = round_model_key(args.round)
    elif args.local is not None:
        artifact = local_model_key(args.local)
    print(registry.download(args.model_id, args.job, args.output, artifact=artifact))
    return 0


def cmd_upload(args) -> int:
    manifest = _registry(args).upload(
        args.model_id,
        args.file,
        args.job,
        name=args.name,
        description=args.description,
        owner=args.owner,
        preprocessing=args.preprocessing,
        input_shape=args.input_shape,
        models_file=args.models,
    )
    if args.json:
        _json({k: v for k, v in manifest.items() if k != "objects"})
        return 0
    from flip.storage.model_files import human_count, shape_text

    print(
        f"uploaded model {manifest['model_id']} run {manifest['run_id']} ({manifest['format']}, "
        f"{human_count(manifest.get('parameter_count'))} parameters, input {shape_text(manifest.get('input_shape'))},"
        f" output {shape_text(manifest.get('output_shape'))}"
        + (", with a preprocessing model" if RunFile.PREPROCESSING in [o["key"] for o in manifest["objects"]] else "")
        + ")"
    )
    print(f"start a job from it: --initial-model {manifest['model_id']}/{manifest['run_id']}")
    return 0


def cmd_remove(args) -> int:
    from flip.checks import check_model_id
    from flip.errors import FlipError, RegistryError

    model_id = check_model_id(args.model_id)
    registry = _registry(args)
    try:
        busy = runs_in_progress(model_id)
    except (FlipError, OSError, ValueError) as exc:
        raise RegistryError(f"cannot check whether a run is using model {model_id}: {exc}") from exc
    if busy:
        raise RegistryError(
            f"model {model_id} is in use: run(s) {', '.join(busy)} have not ended (flip status "
            f"{model_id}); remove it once they have"
        )
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"flip: removing model {model_id} deletes all its runs; add --yes to confirm", file=sys.stderr)
            return 2
        runs = registry.runs(model_id)
        answer = input(f"remove model {model_id} and its {len(runs)} run(s) from s3://{registry.bucket}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not removed")
            return 1
    print(f"removed {registry.remove(model_id, owner=args.owner)} objects of model {model_id}")
    return 0


def cmd_predict(args) -> int:
    from flip.predict import format_prediction, predict

    result = predict(
        args.model_id,
        args.inputs,
        run_id=args.job,
        models_file=args.models,
        samples=args.samples,
        seed=args.seed,
        registry=_registry(args),
    )
    if args.json:
        _json(result.document())
    else:
        print(format_prediction(result))
    return 0


def add_models_parser(sub) -> None:
    """The ``models`` command and its subcommands."""
    models = sub.add_parser("models", help="the model registry (verified runs only are served)")
    models.add_argument("--bucket", default=None, help="default: FLIP_MODELS_BUCKET")
    msub = models.add_subparsers(dest="models_command", required=True)

    listing = msub.add_parser("list", help="every model: name, owner, runs, latest status, latest verified run")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    show = msub.add_parser(
        "show",
        help="a model's metadata: name, description, owner, created, parameters, input "
        "and output shape, rounds, sites, metrics summary, its runs",
    )
    show.add_argument("model_id")
    show.add_argument("--json", action="store_true", help="everything, as JSON")
    show.set_defaults(func=cmd_show)

    metrics = msub.add_parser(
        "metrics",
        help="a run's metrics per round and reporter (sites, their mean, the sites' tests of each global model)",
    )
    metrics.add_argument("model_id")
    metrics.add_argument("--job", default=None, help="run id (default: the latest verified run)")
    metrics.add_argument("--json", action="store_true")
    metrics.set_defaults(func=cmd_metrics)

    rounds = msub.add_parser(
        "rounds", help="the per-round global models and the latest round's local models a run kept"
    )
    rounds.add_argument("model_id")
    rounds.add_argument("--job", default=None, help="run id (default: the latest verified run)")
    rounds.add_argument("--json", action="store_true")
    rounds.set_defaults(func=cmd_rounds)

    pre = msub.add_parser("preprocessing", help="download the model's preprocessing model (exit 1 if it has none)")
    pre.add_argument("model_id")
    pre.add_argument("--job", default=None, help="run id (default: the latest verified run that has one)")
    pre.add_argument("-o", "--output", default=None, help="file, or an existing folder")
    pre.set_defaults(func=cmd_preprocessing)

    download = msub.add_parser(
        "download",
        help="the global model (or the best, a round's, a site's local model, "
        "another artifact, or the report) of the latest (or a given) "
        "verified run, checked against its manifest",
    )
    download.add_argument("model_id")
    download.add_argument("--job", default=None, help="run id (default: the latest verified run)")
    download.add_argument(
        "-o",
        "--output",
        default=None,
        help="file to write, or an existing folder to write the artifact's file name into",
    )
    download.add_argument(
        "--best",
        action="store_true",
        help=f"the best global model ({RunFile.BEST_MODEL}, of a job run with --keep-best)",
    )
    download.add_argument(
        "--round",
        type=int,
        default=None,
        metavar="N",
        help="the global model after round N (a job run with keep_round_models)",
    )
    download.add_argument(
        "--local",
        default=None,
        metavar="SITE",
        help="SITE's local model of the last round (a job that kept local models)",
    )
    download.add_argument(
        "--artifact",
        default=None,
        metavar="KEY",
        help="another object of the run, e.g. metrics.json, swag.pt, ensemble.pt, "
        f"{RunFile.CROSS_VAL_RESULTS} (flip models show --json lists them)",
    )
    download.add_argument(
        "--report", default=None, metavar="DIR", help="instead: the run report (index.html and its curves) into DIR"
    )
    download.set_defaults(func=cmd_download)

    upload = msub.add_parser(
        "upload",
        help="register a model file (state dict or TorchScript) to start jobs from "
        "(--initial-model), with a name, description and preprocessing model",
    )
    upload.add_argument("file")
    upload.add_argument("--name", required=True)
    upload.add_argument("--description", default="")
    upload.add_argument(
        "--preprocessing",
        default=None,
        metavar="FILE",
        help="a preprocessing model (TorchScript, or a state dict built by models.py's "
        "get_preprocessing()); needs --input-shape",
    )
    upload.add_argument(
        "--input-shape",
        default=None,
        metavar="D1,D2,...",
        help="the shape of one raw input, no batch dimension (e.g. 8,8): the files are run on it",
    )
    upload.add_argument(
        "--models",
        default=None,
        metavar="MODELS_PY",
        help="the app's models.py: a state dict must load strictly into get_model()",
    )
    upload.add_argument("--model-id", default=None, metavar="UUID", help="default: a new model id")
    upload.add_argument("--job", default=None, metavar="RUN_ID", help="the run id (default: upload-<time>-<hex>)")
    upload.add_argument("--owner", default=None, help="default: your login name")
    upload.add_argument("--json", action="store_true", help="print the manifest's fields as JSON")
    upload.set_defaults(func=cmd_upload)

    remove = msub.add_parser(
        "remove",
        help="delete a model and all its runs (asks first; refused while a run of it "
        "has not ended, or if another owner uploaded it)",
    )
    remove.add_argument("model_id")
    remove.add_argument("--yes", action="store_true", help="do not ask")
    remove.add_argument("--owner", default=None, help="who removes it (default: your login name)")
    remove.set_defaults(func=cmd_remove)

    predict = msub.add_parser(
        "predict",
        help="predict with a model on image files (PNG, DICOM...) or a .pt tensor; "
        "with the run's uncertainty method, mean and uncertainty per input",
    )
    predict.add_argument("model_id")
    predict.add_argument("inputs", nargs="+", metavar="INPUT")
    predict.add_argument("--job", default=None, help="run id (default: the latest verified run)")
    predict.add_argument(
        "--models",
        default=None,
        metavar="MODELS_PY",
        help="the app's models.py (get_model()), for a state dict; not needed for TorchScript",
    )
    predict.add_argument("--samples", type=int, default=20, help="MC dropout passes or SWAG samples (default 20)")
    predict.add_argument("--seed", type=int, default=0)
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(func=cmd_predict)


__all__ = ["add_models_parser"]
