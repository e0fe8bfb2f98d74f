"""The run report people look at: learning curves (PNG) and a one-page HTML summary."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from flip.run_metrics import guarantee_level, privacy_note

#: what each level of differential privacy protects, as the report says it
GUARANTEES = {"record": "protects each patient's records", "client": "protects each hospital's whole contribution"}

CURVES = "curves.png"
SUMMARY = "index.html"
_PLOTTED = ("accuracy", "loss")
#: the status the report gives a run whose upload has not happened when it is written (it is part of the upload)
UPLOAD_PENDING = (
    "RESULTS_UPLOADED after verification (upload pending when this page was written: it is one of "
    "the run's files checked against manifest.json, and `flip models` serves it only from a verified "
    "run)"
)


def _series(rounds: list[dict], name: str) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in rounds:
        for site, metrics in sorted(entry.get("sites", {}).items()):
            if isinstance(metrics.get(name), (int, float)):
                series.setdefault(site, []).append((entry["round"], metrics[name]))
        if isinstance(entry.get("global", {}).get(name), (int, float)):
            series.setdefault("mean of sites", []).append((entry["round"], entry["global"][name]))
    return series


#: at most this many labels of FLIP apps' metrics are drawn (the first ones, in the order they arrived)
MAX_FLIP_CURVES = 4


def _flip_series(flip_metrics: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """FLIP apps' metrics (``flip_metrics``) as curves: per label, per site, the mean of the round's values (an app
    may send a label several times in a round, e.g. once per class)."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for entry in flip_metrics:
        for site, labels in sorted(entry.get("sites", {}).items()):
            for label, values in labels.items():
                numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
                if numbers:
                    series.setdefault(label, {}).setdefault(site, []).append(
                        (entry["round"], sum(numbers) / len(numbers))
                    )
    return dict(list(series.items())[:MAX_FLIP_CURVES])


def write_curves(rounds: list[dict], path: Path, flip_metrics: list[dict] | None = None) -> Path | None:
    """Plot accuracy and loss (whichever the sites reported) per round, per site and their mean; for FLIP apps, the
    labels they sent with ``send_metrics_value`` (the first few), per site."""
    plotted = {name: series for name in _PLOTTED if (series := _series(rounds, name))}
    plotted.update({f"{label} (FLIP app)": series for label, series in _flip_series(flip_metrics or []).items()})
    if not plotted:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = min(3, len(plotted))
    rows = -(-len(plotted) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.8 * rows), squeeze=False)
    for axis in axes.flat[len(plotted) :]:
        axis.set_visible(False)
    for axis, (name, series) in zip(axes.flat, plotted.items()):
        for label, points in series.items():
            xs, ys = zip(*points)
            mean = label == "mean of sites"
            axis.plot(xs, ys, marker="o", linewidth=2.5 if mean else 1.2, color="black" if mean else None, label=label)
        axis.set_xlabel("round")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(name)
        flip_label = name.endswith(" (FLIP app)")
        axis.set_title(
            f"{name}: the round's mean of what each site sent"
            if flip_label
            else f"{name} per round (site's local model, own validation data)",
            fontsize=9,
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):  # nested metrics (FLIP's validators): their size, not every number
        return f"({len(value)} {'entries' if isinstance(value, dict) else 'values'})"
    return "-" if value is None else str(value)


def _flip_metric_rows(doc: dict[str, Any]) -> list[list[Any]]:
    """The metrics FLIP apps sent (``flip_metrics``): per site and label, how many values and the last one."""
    rows: dict[tuple[str, str], list[Any]] = {}
    for entry in doc.get("flip_metrics", []):
        for site, labels in entry.get("sites", {}).items():
            for label, values in labels.items():
                row = rows.setdefault((site, label), [site, label, 0, None, None])
                row[2] += len(values)
                row[3], row[4] = (values[-1] if values else row[3]), entry.get("round")
    return [rows[k] for k in sorted(rows)]


def _num(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec`` if it is a number, else as text ("-" for None)."""
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else _fmt(value)


def write_summary(doc: dict[str, Any], path: Path, curves: Path | None) -> Path:
    """One HTML page: job, sites, rounds, final metrics, cross-site validation, privacy, S3 key, status.

    ``doc["statuses"]`` are the statuses reported so far; with ``doc["upload_pending"]`` the page says the run is
    RESULTS_UPLOADED only after verification (the page is written before the upload it is part of). A site whose
    policy and the job's own filter of the same kind both applied is named with both.
    """
    rounds = doc.get("rounds", [])
    last = rounds[-1] if rounds else {}
    sites = doc.get("sites", [])
    names = sorted({k for m in last.get("sites", {}).values() for k in m})
    final_rows = [[s] + [last.get("sites", {}).get(s, {}).get(n) for n in names] for s in sites]
    final_rows.append(["mean of sites"] + [last.get("global", {}).get(n) for n in names])
    validation = doc.get("validation", {})
    val_names = sorted({k for models in validation.values() for m in models.values() for k in m})
    val_rows = [
        [site, model] + [m.get(n) for n in val_names]
        for site, models in sorted(validation.items())
        for model, m in sorted(models.items())
    ]
    privacy = last.get("privacy", {})
    privacy_rows = []
    for site in sites:
        applied = privacy.get(site) or [{}]
        for p in applied:
            if p.get("off"):
                detail = "OFF: shared unfiltered"
            elif p.get("deferred"):
                detail = "left the update to the site's policy (defer_to_site)"
            elif "epsilon" in p:
                detail = (
                    f"{guarantee_level(p)}-level (ε, δ)-DP ({GUARANTEES[guarantee_level(p)]}): ε spent "
                    f"{_num(p['epsilon'], '.3g')} of {_num(p.get('max_epsilon'), '.3g')} at δ {p.get('delta')} "
                    f"({p.get('accountant') or 'rdp'} accountant)"
                )
                if p.get("max_grad_norm") is not None:
                    detail += (
                        f"; DP-SGD: max_grad_norm {p['max_grad_norm']}, noise multiplier "
                        f"{_num(p.get('noise_multiplier'), '.3g')}, {p.get('steps')} steps at sample rate "
                        f"{_num(p.get('sample_rate'), '.3g')}"
                    )
                elif p.get("clip_norm") is not None:
                    detail += f"; clip {p.get('clip_norm')}, noise multiplier {_num(p.get('noise_multiplier'), '.3g')}"
            elif p.get("parts"):
                detail = f"percentile {p.get('percentile')}, gamma {p.get('gamma')}, shared " + ", ".join(
                    f"{k} {_num(v.get('shared', 0), '.1%')}" for k, v in p["parts"].items()
                )
            else:
                detail = "-"
            source = " (site policy)" if p.get("site_policy") else ""
            privacy_rows.append([site, (p.get("filter") or "none") + source, detail])
    notes = [f"{site}: {note}" for site in sites if (note := privacy_note(privacy.get(site) or []))]
    statuses = " → ".join(doc.get("statuses", []))
    if doc.get("upload_pending"):
        statuses = f"{statuses} → {UPLOAD_PENDING}" if statuses else UPLOAD_PENDING
    facts = [
        ["model id", doc.get("model_id")],
        ["run id", doc.get("run_id")],
        ["NVFlare job id", doc.get("job_id")],
        ["sites", ", ".join(sites)],
        ["rounds", f"{len(rounds)} of {doc.get('num_rounds') or len(rounds)}"],
        ["started from", doc.get("initial_model") or "-"],
        ["status", statuses],
        ["model in S3", doc.get("s3", "-")],
        ["versions", ", ".join(f"{k} {v}" for k, v in sorted(doc.get("versions", {}).items()))],
        ["written", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())],
    ]
    image = f'<p><img src="{html.escape(curves.name)}" alt="learning curves"></p>' if curves else ""
    flip_metrics = (
        (
            "<h2>Metrics the app sent (send_metrics_value)</h2>"
            + _table(["site", "label", "values", "last value", "at round"], _flip_metric_rows(doc))
        )
        if doc.get("flip_metrics")
        else ""
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>FLIP run {html.escape(str(doc.get("run_id")))}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:72em}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}th{{background:#f3f3f3}}img{{max-width:100%}}</style>
</head><body>
<h1>FLIP run report</h1>
{_table(["", ""], facts)}
<h2>Final round: each site's locally trained model on its own validation data</h2>
{_table(["site"] + names, final_rows)}
{image}
{flip_metrics}
<h2>Cross-site validation of the global model</h2>
{_table(["site", "model"] + val_names, val_rows) if val_rows else "<p>none</p>"}
<h2>Privacy filters applied by each site (last round, in order)</h2>
{f"<p><b>Training stopped early:</b> {html.escape(str(doc['stopped_early']))}</p>" if doc.get("stopped_early") else ""}
{"".join(f"<p><b>Filtered twice:</b> {html.escape(n)}</p>" for n in notes)}
{_table(["site", "filter", "settings and effect"], privacy_rows)}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def write_report(doc: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write ``curves.png`` and ``index.html`` into ``folder``; return them by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    curves = write_curves(doc.get("rounds", []), folder / CURVES, doc.get("flip_metrics"))
    summary = write_summary(doc, folder / SUMMARY, curves)
    return {p.name: p for p in (curves, summary) if p is not None}
