"""A site's own policy and a job's filter of the same kind: both apply and every run log and report says so, or the
job leaves the update to the site's policy (``defer_to_site``, the standard job's ``defer_privacy_to_site``).

Real DXOs and FLContexts; the site's scope filter is built from the privacy.json flip provisioning writes."""

from __future__ import annotations

import html
import json
import logging

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_context import FLContext

from flip.constants import FlipMeta
from flip.jobs import write_job
from flip.nvflare.components import PercentilePrivacy, StagePercentilePrivacy
from flip.provisioning import site_privacy_policy
from flip.report import UPLOAD_PENDING, write_summary
from flip.run_metrics import RunMetrics, privacy_note

pytestmark = pytest.mark.unit
NOTE = "site policy applies PercentilePrivacy(10, 0.01); the job's PercentilePrivacy(10, 0.01) also applies"


def _site_filter() -> PercentilePrivacy:
    """The filter a provisioned site's privacy.json names, built as NVFlare builds it (path + args)."""
    (entry,) = site_privacy_policy()["scopes"][0]["task_result_filters"]
    assert entry["path"] == "flip.nvflare.components.PercentilePrivacy"
    return PercentilePrivacy(**entry["args"])


def _update(seed: int = 0):
    diff = {"w": np.random.default_rng(seed).normal(size=200).astype(np.float32)}
    return DXO(DataKind.WEIGHT_DIFF, diff).to_shareable()


def _through(*filters, shareable=None):
    shareable = shareable if shareable is not None else _update()
    for f in filters:
        shareable = f.process(shareable, FLContext())
    return from_shareable(shareable)


def test_a_jobs_filter_after_the_site_policy_applies_and_says_so(caplog):
    caplog.set_level(logging.INFO)
    dxo = _through(_site_filter(), PercentilePrivacy(percentile=10, gamma=0.01))
    site, job = dxo.get_meta_prop(FlipMeta.PRIVACY)
    assert site["site_policy"] is True and "site_policy" not in job and "parts" in job  # filtered twice
    assert any(NOTE in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert privacy_note([site, job]) == NOTE


def test_defer_to_site_leaves_the_update_to_the_site_policy(caplog):
    caplog.set_level(logging.INFO)
    once = _through(_site_filter(), shareable=_update(1)).data["w"]
    dxo = _through(_site_filter(), PercentilePrivacy(defer_to_site=True), shareable=_update(1))
    np.testing.assert_array_equal(dxo.data["w"], once)  # the job's filter changed nothing
    site, job = dxo.get_meta_prop(FlipMeta.PRIVACY)
    assert job == {"filter": "PercentilePrivacy", "percentile": 10, "gamma": 0.01, "deferred": True}
    assert privacy_note([site, job]) == (
        "site policy applies PercentilePrivacy(10, 0.01); the job's PercentilePrivacy(10, 0.01) left the update to it"
    )
    assert any("leaves this update to it (defer_to_site)" in r.getMessage() for r in caplog.records)


def test_defer_to_site_still_filters_at_a_site_without_a_policy():
    """Fails closed: no site policy recorded on the update, so the job's filter applies."""
    raw = from_shareable(_update(2)).data["w"].copy()
    dxo = _through(PercentilePrivacy(percentile=50, gamma=0.01, defer_to_site=True), shareable=_update(2))
    (record,) = dxo.get_meta_prop(FlipMeta.PRIVACY)
    assert "deferred" not in record and record["parts"]["update"]["shared"] < 0.6
    assert not np.array_equal(dxo.data["w"], raw)


def test_a_record_not_marked_site_policy_is_not_deferred_to():
    """An earlier job filter (not the site's policy) does not let a deferring filter skip its work."""
    dxo = _through(PercentilePrivacy(), PercentilePrivacy(defer_to_site=True))
    assert all("deferred" not in r for r in dxo.get_meta_prop(FlipMeta.PRIVACY))


def test_the_stage_filter_is_of_the_same_kind():
    dxo = _through(_site_filter(), StagePercentilePrivacy(defer_to_site=True))
    assert dxo.get_meta_prop(FlipMeta.PRIVACY)[1]["deferred"] is True


def test_site_policy_and_defer_to_site_are_checked():
    with pytest.raises(ValueError, match="defer_to_site must be True or False, got 'yes'"):
        PercentilePrivacy(defer_to_site="yes")
    with pytest.raises(ValueError, match="site_policy and defer_to_site cannot both be True"):
        PercentilePrivacy(site_policy=True, defer_to_site=True)


def test_the_server_records_the_note_and_the_report_shows_it(tmp_path):
    dxo = _through(_site_filter(), PercentilePrivacy())
    metrics = RunMetrics("m", "j", "r")
    metrics.add_contribution(0, "hospital-a", {"accuracy": 0.5}, dxo.get_meta_prop(FlipMeta.PRIVACY), None, 3)
    metrics.add_contribution(
        0, "hospital-b", {"accuracy": 0.5}, _through(PercentilePrivacy()).get_meta_prop(FlipMeta.PRIVACY), None, 3
    )
    metrics.round_done(0)
    assert metrics.privacy_notes() == {"hospital-a": NOTE}
    page = html.unescape(
        write_summary({**metrics.document(), "sites": metrics.sites()}, tmp_path / "index.html", None).read_text()
    )
    assert f"hospital-a: {NOTE}" in page and "hospital-b: site policy" not in page
    assert "PercentilePrivacy (site policy)" in page


def test_the_job_option_writes_defer_to_site_into_the_sites_filter(tmp_path):
    job = write_job("standard", tmp_path, defer_privacy_to_site=True)
    config = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    (entry,) = config["task_result_filters"]
    assert entry["filters"][0]["args"]["defer_to_site"] is True
    with pytest.raises(ValueError, match="defer_privacy_to_site must be True or False, got 1"):
        write_job("standard", tmp_path / "bad", defer_privacy_to_site=1)


def test_the_report_written_before_the_upload_says_what_is_known(tmp_path):
    """Item 7: the report is written before the upload it is part of; it used to end at TRAINING_STARTED."""
    doc = {"statuses": ["INITIATED", "PREPARED", "TRAINING_STARTED"], "upload_pending": True, "rounds": []}
    page = html.unescape(write_summary(doc, tmp_path / "index.html", None).read_text())
    assert f"INITIATED → PREPARED → TRAINING_STARTED → {UPLOAD_PENDING}" in page
    assert UPLOAD_PENDING.startswith("RESULTS_UPLOADED after verification (upload pending")
