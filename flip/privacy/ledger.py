"""A site's privacy ledger: the ε each job spent on each of the site's data sets, kept across jobs.

Differential privacy composes: two jobs that each spend ε on the same records spend 2ε together (and their δs
add). So the budget is the site's, not a job's: the ledger is a file in the site's own workspace
(``<site workspace>/local/privacy_ledger.json``, beside ``privacy.json``), outside every job folder, so no job can
start it again at zero. Each data set (a FLIP app's project id, or the name the site's policy gives) has its total
budget and one entry per job:

.. code-block:: json

    {"format": "flip-privacy-ledger/1", "site": "hospital-a",
     "datasets": {"digits-demo": {"total_epsilon": 8.0,
         "jobs": {"<job id>": {"level": "record", "epsilon": 7.99, "planned_epsilon": 8.0, "delta": 1e-05,
                               "accountant": "rdp", "status": "done", "started": "...", "updated": "..."}}}}}

A job is admitted only if its planned ε fits in what is left (:meth:`PrivacyLedger.admit`); while it runs it is
charged its planned ε (or more, if it spent more), and once it ended what it spent (:meth:`PrivacyLedger.charge`).
Jobs compose by adding ε and δ (basic composition: an upper bound). Every change takes an exclusive lock
(``privacy_ledger.json.lock``) and is written atomically (flip.files.write_json_atomic): readers see the old
ledger or the new one. A ledger that cannot be read refuses every job until the site repairs it (fails closed).

No NVFlare import.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flip.checks import check_path_name, check_positive, is_number
from flip.errors import BudgetRefused, PrivacyError
from flip.files import write_json_atomic
from flip.privacy.dp_sgd import check_delta

LEDGER_FILE = "privacy_ledger.json"
FORMAT = "flip-privacy-ledger/1"
RUNNING, DONE = "running", "done"
#: ε differences below this are rounding, not spending
TOLERANCE = 1e-9


def ledger_path(workspace_root: str | Path) -> Path:
    """Where a site keeps its ledger: ``<workspace root>/local/privacy_ledger.json``."""
    return Path(workspace_root) / "local" / LEDGER_FILE


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def charge(job: dict[str, Any]) -> float:
    """The ε a job counts for: what it spent once done; while running, at least what it planned."""
    spent = float(job.get("epsilon", 0.0))
    return spent if job.get("status") == DONE else max(spent, float(job.get("planned_epsilon", 0.0)))


@dataclass(frozen=True)
class DatasetBudget:
    """One data set's line of the ledger."""

    dataset: str
    total_epsilon: float
    spent: float  # the jobs' charges added
    delta: float  # the jobs' δs added
    jobs: int
    running: int

    @property
    def remaining(self) -> float:
        return max(0.0, self.total_epsilon - self.spent)


class PrivacyLedger:
    """The ledger file at ``path`` (see the module docstring).

    Args:
        path: the ledger file (its folder must exist: the site's ``local/``).
        site: the site's name, written into a new ledger.
    """

    def __init__(self, path: str | Path, site: str = ""):
        self.path = Path(path)
        self.site = site

    # -- reading -------------------------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """The ledger (an empty one if the file does not exist).

        Raises:
            PrivacyError: the file is not a ledger (not JSON, another format, bad entries): nothing is charged
                against an unreadable budget.
        """
        if not self.path.exists():
            return {"format": FORMAT, "site": self.site, "datasets": {}}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PrivacyError(
                f"the privacy ledger {self.path} cannot be read ({type(exc).__name__}): no job is "
                "admitted until the site repairs it"
            ) from exc
        problem = _ledger_problem(doc)
        if problem:
            raise PrivacyError(
                f"the privacy ledger {self.path} is not a ledger ({problem}): no job is admitted until "
                "the site repairs it"
            )
        return doc

    def budgets(self) -> list[DatasetBudget]:
        """Every data set's budget, by name."""
        doc = self.read()
        return [_budget(name, entry) for name, entry in sorted(doc["datasets"].items())]

    def budget(self, dataset: str) -> DatasetBudget | None:
        entry = self.read()["datasets"].get(dataset)
        return _budget(dataset, entry) if entry is not None else None

    # -- changing ------------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The ledger, under an exclusive lock, written back atomically when the block ends without error."""
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                doc = self.read()
                yield doc
                write_json_atomic(self.path, doc, indent=2, sort_keys=True)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def admit(
        self,
        dataset: str,
        job_id: str,
        epsilon: float,
        delta: float,
        total_epsilon: float,
        accountant: str,
        level: str = "record",
    ) -> DatasetBudget:
        """Admit job ``job_id`` to spend ``epsilon`` on ``dataset`` if the site has that much left; record it.

        A job already in the ledger (its first task ran before) is admitted as recorded (the call is
        idempotent); the data set's total becomes ``total_epsilon`` (the site's policy now).

        Returns:
            The data set's budget with this job charged.

        Raises:
            BudgetRefused: the job needs more than is left (the message names the data set, what is left of the
                total and what the job needs).
            PrivacyError: the ledger cannot be read.
        """
        check_path_name("dataset", dataset)
        check_path_name("job id", job_id)
        check_positive("epsilon", epsilon)
        check_delta("delta", delta)
        check_positive("total_epsilon", total_epsilon)
        with self._locked() as doc:
            entry = doc["datasets"].setdefault(dataset, {"total_epsilon": total_epsilon, "jobs": {}})
            entry["total_epsilon"] = total_epsilon
            if job_id not in entry["jobs"]:
                budget = _budget(dataset, entry)
                if epsilon > budget.remaining + TOLERANCE:
                    raise BudgetRefused(
                        f"privacy budget: data set {dataset!r} has ε={budget.remaining:.4g} left of its total "
                        f"{total_epsilon:g} at this site ({budget.jobs} earlier job(s) spent {budget.spent:.4g}); this "
                        f"job needs ε={epsilon:g}: refused (`flip privacy ledger` shows the ledger)"
                    )
                entry["jobs"][job_id] = {
                    "level": level,
                    "epsilon": 0.0,
                    "planned_epsilon": epsilon,
                    "delta": delta,
                    "accountant": accountant,
                    "status": RUNNING,
                    "started": _now(),
                    "updated": _now(),
                }
            return _budget(dataset, entry)

    def spend(self, dataset: str, job_id: str, epsilon: float, done: bool = False) -> DatasetBudget:
        """Record that ``job_id`` has spent ``epsilon`` on ``dataset`` so far (never less than recorded before);
        ``done``: the job ended (it is charged what it spent from now on).

        Raises:
            PrivacyError: the job was never admitted, or the ledger cannot be read.
        """
        if not (is_number(epsilon) and epsilon >= 0):
            raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        with self._locked() as doc:
            job = doc["datasets"].get(dataset, {}).get("jobs", {}).get(job_id)
            if job is None:
                raise PrivacyError(f"job {job_id!r} was not admitted to data set {dataset!r}: it cannot spend")
            job["epsilon"] = max(float(job["epsilon"]), float(epsilon))
            job["updated"] = _now()
            if done:
                job["status"] = DONE
            return _budget(dataset, doc["datasets"][dataset])


def _budget(name: str, entry: dict[str, Any]) -> DatasetBudget:
    jobs = entry.get("jobs", {}).values()
    return DatasetBudget(
        dataset=name,
        total_epsilon=float(entry["total_epsilon"]),
        spent=sum(charge(j) for j in jobs),
        delta=sum(float(j.get("delta", 0.0)) for j in jobs),
        jobs=len(jobs),
        running=sum(j.get("status") != DONE for j in jobs),
    )


def _ledger_problem(doc: Any) -> str | None:
    """Why ``doc`` is not a ledger, or None."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("datasets"), dict):
        return f"expected a JSON object with format {FORMAT!r} and datasets"
    for name, entry in doc["datasets"].items():
        if (
            not isinstance(entry, dict)
            or not is_number(entry.get("total_epsilon"))
            or not isinstance(entry.get("jobs"), dict)
        ):
            return f"data set {name!r} needs total_epsilon and jobs"
        for job_id, job in entry["jobs"].items():
            if not isinstance(job, dict) or not all(
                is_number(job.get(k)) and job[k] >= 0 for k in ("epsilon", "planned_epsilon", "delta")
            ):
                return f"job {job_id!r} of data set {name!r} needs epsilon, planned_epsilon and delta >= 0"
    return None


def format_ledger(ledger: PrivacyLedger) -> str:
    """The ledger as ``flip privacy ledger`` prints it: one line per data set, then one per job."""
    doc = ledger.read()
    if not doc["datasets"]:
        return f"{ledger.path}: no job has spent privacy budget at this site yet"
    lines = [
        f"{ledger.path} (site {doc.get('site') or '?'}): ε spent per data set, jobs composed by adding ε and δ",
        f"{'data set':<24} {'spent ε':>9} {'total ε':>9} {'left ε':>9} {'δ':>9}  jobs",
    ]
    for budget in ledger.budgets():
        lines.append(
            f"{budget.dataset:<24} {budget.spent:>9.4g} {budget.total_epsilon:>9.4g} {budget.remaining:>9.4g} "
            f"{budget.delta:>9.2g}  {budget.jobs}"
            + (f" ({budget.running} running: charged what they planned)" if budget.running else "")
        )
        jobs = doc["datasets"][budget.dataset]["jobs"]
        for job_id, job in sorted(jobs.items(), key=lambda kv: str(kv[1].get("started"))):
            lines.append(
                f"  {job_id}: {job.get('level', '?')}-level ε={job['epsilon']:.4g} of "
                f"{job['planned_epsilon']:g} at δ={job['delta']:g} ({job.get('accountant', '?')}), "
                f"{job.get('status', '?')}, started {job.get('started', '?')}"
            )
    return "\n".join(lines)
