"""RunMetrics: what the server records of a run, round by round, and the ``metrics.json`` document (no nvflare)."""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flip import site_messages
from flip.constants import FlipMeta
from flip.errors import SiteMessageError
from flip.files import write_json_atomic
from flip.metrics import NUM_SAMPLES, weighted_means

#: the filters of the percentile policy (a site's PercentilePrivacy and a job's stage-aware one are of one kind)
PERCENTILE_FILTERS = ("PercentilePrivacy", "StagePercentilePrivacy")


def _g(value: Any) -> str:
    return format(value, "g") if isinstance(value, numbers.Real) and not isinstance(value, bool) else str(value)


def describe_record(record: Mapping[str, Any]) -> str:
    """A privacy record as the run log and the report name it: ``PercentilePrivacy(10, 0.01)``,
    ``GaussianPrivacy(clip 1, noise 1.1)``, else the filter's name."""
    name = str(record.get("filter"))
    if "percentile" in record:
        return f"{name}({_g(record['percentile'])}, {_g(record.get('gamma'))})"
    if "clip_norm" in record:
        return f"{name}(clip {_g(record['clip_norm'])}, noise {_g(record.get('noise_multiplier'))})"
    if "level" in record:
        return f"{name}({record['level']}-level, ε {_g(record.get('max_epsilon'))}, δ {_g(record.get('delta'))})"
    return name


def guarantee_level(record: Mapping[str, Any]) -> str:
    """``record`` or ``client``: which guarantee a privacy record's ε is (records before levels were named: the
    client-level filter's)."""
    level = record.get("level")
    return level if level in ("record", "client") else "client"


def epsilon_label(record: Mapping[str, Any]) -> str:
    """The metric name an ε is reported under (metrics.json, the hub), saying which guarantee it is:
    ``dp_epsilon/record-level/delta-1e-05/rdp`` (record level: one patient; client level: one hospital)."""
    delta = f"delta-{_g(record['delta'])}/" if record.get("delta") is not None else ""
    return f"dp_epsilon/{guarantee_level(record)}-level/{delta}{record.get('accountant') or 'rdp'}"


def privacy_note(records: list[Mapping[str, Any]]) -> str | None:
    """What a site's policy and the job's own filter of the same kind both did to one update, in one sentence
    ("site policy applies PercentilePrivacy(10, 0.01); the job's PercentilePrivacy(10, 0.01) also applies"), or None
    when they did not meet (no site policy, another kind, the job's filter off)."""
    for site in (r for r in records if r.get("site_policy")):
        kind = PERCENTILE_FILTERS if site.get("filter") in PERCENTILE_FILTERS else (site.get("filter"),)
        for job in (r for r in records if not r.get("site_policy") and r.get("filter") in kind and not r.get("off")):
            if job.get("deferred"):
                return (
                    f"site policy applies {describe_record(site)}; the job's {describe_record(job)} left the "
                    "update to it"
                )
            return f"site policy applies {describe_record(site)}; the job's {describe_record(job)} also applies"
    return None


#: the most values a run records of the metrics FLIP apps send (``send_metrics_value``); later ones are dropped
MAX_FLIP_METRIC_VALUES = 100_000


class RunMetrics:
    """Collect a run's per-round, per-site metrics and what the server did with them.

    Per round (0-based here, 1-based in the document): each site's metrics of its *aggregated* update (with the
    weight the aggregator accepted as ``num_samples`` and, under differential privacy, the site's ε so far under a
    name that says its guarantee: ``dp_epsilon/record-level/delta-1e-05/rdp`` or ``dp_epsilon/client-level/...``),
    its privacy annotations, the stage, the sites' sample-weighted mean (``global``), which updates were
    accepted or excluded, the server optimizer's step (FedOpt), the FedDC routing, and each site's validation of
    the round's global model. The run records why training stopped early, if it did.

    Everything a site sent arrives raw and is checked here against flip.site_messages: a bad value is dropped on
    its own and the methods return why (naming the field, never the value), for the caller to log.

    FLIP apps also send single values while a task runs (``send_metrics_value``: label, value, optional round).
    The server parses each event (flip.nvflare.metrics.parse_metric_event) and hands it to
    :meth:`add_flip_metric`; ``metrics.json`` keeps them apart from the rounds above, under ``flip_metrics``, per
    round (the round the app sent, else the server's round), site and label, the values in arrival order (a label
    sent several times in a round keeps every value).

    Args:
        model_id, job_id, run_id: the run's identity, as written in the document.
    """

    def __init__(self, model_id: str = "", job_id: str = "", run_id: str = ""):
        self.model_id = model_id
        self.job_id = job_id
        self.run_id = run_id
        self.num_rounds: int | None = None
        self.stopped_early: str | None = None
        self.rounds: dict[int, dict[str, Any]] = {}
        #: FLIP apps' metrics: round -> site -> label -> values in arrival order
        self.flip_metrics: dict[int, dict[str, dict[str, list[int | float]]]] = {}
        self.flip_metric_values = 0
        self.flip_metrics_dropped = 0
        self._flip_order: dict[tuple[int, str, str], list[tuple[bool, int, int, int | float]]] = {}
        #: per site, the guarantee of the ε it spent so far (level, ε, δ, accountant, budget)
        self.differential_privacy: dict[str, dict[str, Any]] = {}

    def _round(self, round_num: int) -> dict[str, Any]:
        return self.rounds.setdefault(round_num, {"sites": {}})

    def add_contribution(
        self, round_num: int, site: str, metrics: Any, privacy: Any = None, stage: Any = None, num_samples: Any = None
    ) -> tuple[dict[str, int | float], list[str]]:
        """Record what came with a site's aggregated update: its metrics (the result's ``flip_metrics`` header), the
        privacy records and stage of its DXO meta, and the weight the aggregator accepted (``num_samples``, which
        replaces what the site claimed in its metrics).

        Returns:
            The metrics recorded for the site, and why values were dropped.
        """
        dropped: list[str] = []
        clean = _metrics(metrics, FlipMeta.METRICS, dropped) or {}
        privacy = _checked(site_messages.privacy_annotations, privacy, [], dropped)
        stage = _checked(site_messages.stage, stage, None, dropped)
        if isinstance(num_samples, numbers.Integral) and not isinstance(num_samples, bool):
            clean[NUM_SAMPLES] = int(num_samples)
        for applied in privacy:
            if applied.get("epsilon") is not None:  # the site's privacy spent so far, labelled with its guarantee
                clean[epsilon_label(applied)] = applied["epsilon"]
                self.differential_privacy[site] = {
                    "level": guarantee_level(applied),
                    "epsilon": applied["epsilon"],
                    "delta": applied.get("delta"),
                    "accountant": applied.get("accountant") or "rdp",
                    "max_epsilon": applied.get("max_epsilon"),
                    "filter": applied.get("filter"),
                }
        entry = self._round(round_num)
        entry["sites"][site] = clean
        if stage:
            entry["stage"] = stage
        entry.setdefault("privacy", {})[site] = privacy
        return clean, dropped

    def round_done(
        self,
        round_num: int,
        aggregation_report: Mapping[str, Any] | None = None,
        server_step: Mapping[str, Any] | None = None,
        feddc_report: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, float], list[str]]:
        """Close a round: the aggregator's report (the metrics of a site whose update it excluded once every update
        was in are removed: they were not averaged), the sites' weighted mean, the server step, the FedDC report.

        Returns:
            The sites' weighted mean, and the sites whose metrics were removed.
        """
        entry = self._round(round_num)
        removed = []
        if aggregation_report:
            entry["accepted"], entry["excluded"] = aggregation_report["accepted"], aggregation_report["excluded"]
            for site in aggregation_report["excluded"]:
                if entry["sites"].pop(site, None) is not None:
                    entry.get("privacy", {}).pop(site, None)
                    removed.append(site)
        entry["global"] = weighted_means(entry["sites"])
        entry["done"] = time.time()
        if server_step:
            entry["server"] = dict(server_step)
        if feddc_report:
            entry["feddc"] = dict(feddc_report)
        return entry["global"], removed

    def add_validation(
        self, round_num: int, site: str, metrics: Any
    ) -> tuple[dict[str, int | float] | None, list[str]]:
        """Record a site's validation of the round's global model.

        Returns:
            The metrics recorded (None: nothing valid was left, nothing recorded), and why values were dropped.
        """
        dropped: list[str] = []
        clean = _metrics(metrics if metrics is not None else {}, "validation", dropped)
        if clean is not None:
            self._round(round_num).setdefault("validation", {})[site] = clean
        return clean, dropped

    def privacy_notes(self) -> dict[str, str]:
        """Per site, where its policy and the job's own filter met (:func:`privacy_note`), from its last update."""
        notes: dict[str, str] = {}
        for round_num in sorted(self.rounds):
            for site, records in self.rounds[round_num].get("privacy", {}).items():
                note = privacy_note(records)
                if note:
                    notes[site] = note
        return notes

    def add_flip_metric(
        self, round_num: int, site: str, label: str, value: int | float, seq: int | None = None
    ) -> bool:
        """Record one value a FLIP app sent (already checked: a site name, a label, a finite number, round >= 0).

        ``seq`` is the site's own order stamp of the value (events can arrive out of the order they were sent):
        a label's values are kept in that order, values without one after them in the order they arrived.

        Returns:
            False if the run already holds MAX_FLIP_METRIC_VALUES values (this one is dropped and counted).
        """
        if self.flip_metric_values >= MAX_FLIP_METRIC_VALUES:
            self.flip_metrics_dropped += 1
            return False
        values = self.flip_metrics.setdefault(round_num, {}).setdefault(site, {}).setdefault(label, [])
        self._flip_order.setdefault((round_num, site, label), []).append((seq is None, seq or 0, len(values), value))
        values[:] = [v for *_, v in sorted(self._flip_order[(round_num, site, label)])]
        self.flip_metric_values += 1
        return True

    def sites(self) -> list[str]:
        """Every site with metrics in some round, sorted."""
        return sorted({s for entry in self.rounds.values() for s in entry["sites"]})

    def document(self) -> dict[str, Any]:
        """What ``metrics.json`` holds: per round (1-based), per site and the sites' weighted mean; and, when a FLIP
        app sent any, ``flip_metrics``: ``[{"round": r, "sites": {site: {label: [values]}}}]`` by round, and
        ``flip_metrics_dropped`` (values beyond MAX_FLIP_METRIC_VALUES) when some were."""
        doc: dict[str, Any] = {
            "model_id": self.model_id,
            "job_id": self.job_id,
            "run_id": self.run_id,
            "num_rounds": self.num_rounds,
            "stopped_early": self.stopped_early,
            "rounds": [{"round": r + 1, **self.rounds[r]} for r in sorted(self.rounds)],
        }
        if self.differential_privacy:
            doc["differential_privacy"] = dict(sorted(self.differential_privacy.items()))
        if self.flip_metrics:
            doc["flip_metrics"] = [{"round": r, "sites": self.flip_metrics[r]} for r in sorted(self.flip_metrics)]
        if self.flip_metrics_dropped:
            doc["flip_metrics_dropped"] = self.flip_metrics_dropped
        return doc

    def write(self, path: str | Path) -> Path:
        """Write the document as strict JSON, atomically.

        Raises:
            JSONValueError: a value cannot be written as strict JSON (named by its key).
        """
        return write_json_atomic(Path(path), self.document(), indent=2, sort_keys=True)


def _metrics(raw: Any, field: str, dropped: list[str]) -> dict[str, int | float] | None:
    """The valid entries of a site's metrics; None if a bad dict left nothing valid."""
    clean, why = site_messages.metrics(raw, field)
    dropped.extend(why)
    return None if why and not clean else clean


def _checked(check: Callable[[Any], Any], raw: Any, default: Any, dropped: list[str]) -> Any:
    try:
        return check(raw)
    except SiteMessageError as exc:
        dropped.append(str(exc))
        return default
