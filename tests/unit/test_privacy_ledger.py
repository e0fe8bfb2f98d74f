"""The site's privacy ledger (flip.privacy.ledger): kept in the site's local/, outside every job folder; a new job
or a restarted site cannot reset it; a job that would pass the total is refused at its first training task naming
what is left; `flip privacy ledger` shows it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from nvflare.apis.event_type import EventType

from flip.constants import ComponentId
from flip.errors import BudgetRefused, PrivacyError, TaskFailed
from flip.nvflare.components import SitePrivacyPolicy
from flip.privacy.ledger import LEDGER_FILE, PrivacyLedger, ledger_path
from flip.utils import make_private
from tests.unit.test_record_dp import BATCH, SiteEngine, _ctx, _data, _model, _train

pytestmark = pytest.mark.unit


def _run_job(root, job_id: str, target: float = 3.0, total: float = 7.0) -> None:
    """One job at a freshly started site (a new policy object: nothing in memory survives), one training round."""
    policy = SitePrivacyPolicy(target_epsilon=target, total_epsilon=total, dataset="digits")
    engine = SiteEngine(root, {ComponentId.SITE_PRIVACY: policy})
    ctx = _ctx(engine, job_id=job_id)
    engine.fire(EventType.START_RUN, ctx)
    try:
        with policy.training(ctx, "ignored-project", total_rounds=1) as task:
            model = _model()
            private_model, optimizer, loader = make_private(
                model, torch.optim.SGD(model.parameters(), lr=0.1), torch.utils.data.DataLoader(_data(), BATCH), ctx
            )
            _train(private_model, optimizer, loader)
            task.ok = True
    finally:
        engine.fire(EventType.END_RUN, ctx)


def test_the_ledger_survives_new_jobs_and_restarts_and_refuses_an_over_budget_job(tmp_path):
    root = tmp_path / "hospital-a"
    _run_job(root, "job-1")
    _run_job(root, "job-2")  # a new job, a new policy object: the ledger still has job-1
    path = ledger_path(root)
    assert path == root / "local" / LEDGER_FILE and path.is_file()
    assert not (root / "job-1" / LEDGER_FILE).exists()  # outside every job folder
    budget = PrivacyLedger(path).budget("digits")
    assert budget.jobs == 2 and budget.running == 0
    assert 5.8 < budget.spent <= 6.0 and budget.remaining == pytest.approx(7.0 - budget.spent)
    # job-3 needs 3 of the ~1 left: refused at its first training task, naming what is left, before any training
    with pytest.raises(
        TaskFailed,
        match=rf"data set 'digits' has ε={budget.remaining:.4g} left of its total 7 at "
        r"this site \(2 earlier job\(s\) spent .*\); this job needs ε=3: refused",
    ):
        _run_job(root, "job-3")
    assert PrivacyLedger(path).budget("digits").jobs == 2  # the refused job spent nothing
    assert not list(path.parent.glob("*.tmp"))  # written atomically: no partial file left


def test_a_running_job_is_charged_what_it_planned_and_admitting_it_again_is_idempotent(tmp_path):
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE, site="site-1")
    ledger.admit("d", "job-1", 3.0, 1e-5, 5.0, "rdp")
    assert ledger.budget("d").spent == 3.0  # planned, while it runs
    ledger.admit("d", "job-1", 3.0, 1e-5, 5.0, "rdp")  # its next task: not charged twice
    assert ledger.budget("d").jobs == 1
    with pytest.raises(BudgetRefused, match=r"has ε=2 left of its total 5"):
        ledger.admit("d", "job-2", 3.0, 1e-5, 5.0, "rdp")
    ledger.spend("d", "job-1", 1.25, done=True)
    assert ledger.budget("d").spent == 1.25
    ledger.spend("d", "job-1", 0.5)  # never less than recorded before
    assert ledger.budget("d").spent == 1.25


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"format": "other"}),
        json.dumps(
            {"format": "flip-privacy-ledger/1", "datasets": {"d": {"total_epsilon": 8, "jobs": {"j": {"epsilon": -1}}}}}
        ),
    ],
)
def test_an_unreadable_ledger_refuses_every_job(tmp_path, content):
    path = tmp_path / LEDGER_FILE
    path.write_text(content)
    with pytest.raises(PrivacyError, match="no job is admitted until the site repairs it"):
        PrivacyLedger(path).admit("d", "job-1", 1.0, 1e-5, 8.0, "rdp")
    assert path.read_text() == content  # left for the site to look at


def test_flip_privacy_ledger_shows_the_budget(tmp_path):
    root = tmp_path / "hospital-a"
    _run_job(root, "job-1", target=2.0, total=8.0)
    out = subprocess.run(
        [sys.executable, "-m", "flip.cli", "privacy", "ledger", "--site", str(root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spent = PrivacyLedger(ledger_path(root)).budget("digits").spent
    assert "digits" in out and f"{spent:.4g}" in out and f"{8.0 - spent:.4g}" in out
    assert "job-1: record-level" in out and "done" in out
    doc = json.loads(
        subprocess.run(
            [sys.executable, "-m", "flip.cli", "privacy", "ledger", "--site", str(root), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert doc["datasets"]["digits"]["jobs"]["job-1"]["level"] == "record"
    bad = subprocess.run(
        [sys.executable, "-m", "flip.cli", "privacy", "ledger", "--site", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "--site must be a site's workspace" in bad.stderr
