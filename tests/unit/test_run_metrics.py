"""RunMetrics, the server's record of a run's metrics (flip/run_metrics.py): plain Python, tested directly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from flip.errors import JSONValueError
from flip.run_metrics import RunMetrics

pytestmark = pytest.mark.unit

PRIVACY = [{"filter": "GaussianPrivacy", "epsilon": 1.5, "parts": {"update": {"shared": 1.0, "clipped": 0.0}}}]


def test_a_round_per_site_and_its_weighted_mean():
    run = RunMetrics("m", "job-1", "run-1")
    # the weight the aggregator accepted (num_samples) replaces what the site claimed in its metrics
    assert run.add_contribution(0, "site-1", {"num_samples": 999, "accuracy": 0.5}, num_samples=10) == (
        {"num_samples": 10, "accuracy": 0.5},
        [],
    )
    metrics, dropped = run.add_contribution(0, "site-2", {"accuracy": 0.8, "loss": 2.0}, PRIVACY, "denoise", 30)
    assert (
        metrics == {"accuracy": 0.8, "loss": 2.0, "num_samples": 30, "dp_epsilon/client-level/rdp": 1.5}
        and dropped == []
    )
    means, removed = run.round_done(0)
    # accuracy: (10*0.5 + 30*0.8) / 40 = 0.725; loss only from site-2; dp_epsilon is the only site's
    assert means["accuracy"] == pytest.approx(0.725) and means["loss"] == pytest.approx(2.0)
    assert means["num_samples"] == 40 and removed == []
    entry = run.rounds[0]
    assert entry["stage"] == "denoise" and entry["privacy"] == {"site-1": [], "site-2": PRIVACY}
    assert isinstance(entry["done"], float)


def test_what_a_site_may_not_send_is_dropped_and_named():
    run = RunMetrics()
    metrics, dropped = run.add_contribution(
        0,
        "site-1",
        {"accuracy": 0.9, "loss": float("nan"), "raw": np.zeros(3)},
        privacy=["oops"],
        stage=np.array("denoise"),
        num_samples=True,
    )
    assert metrics == {"accuracy": 0.9}  # num_samples=True is not a count
    assert len(dropped) == 4
    assert any("'loss'" in why for why in dropped) and any("'raw'" in why for why in dropped)
    assert any("flip_privacy[0]" in why for why in dropped) and any("flip_stage" in why for why in dropped)
    assert run.rounds[0]["privacy"] == {"site-1": []} and "stage" not in run.rounds[0]
    assert not any("nan" in why.lower() and "0.9" in why for why in dropped)  # reasons name fields, not values


def test_a_metrics_dict_with_nothing_valid_left_is_recorded_empty_for_an_update():
    run = RunMetrics()
    metrics, dropped = run.add_contribution(0, "site-1", "not a dict", num_samples=5)
    assert metrics == {"num_samples": 5} and dropped == ["flip_metrics: expected a dict of metrics, got str"]


def test_excluded_updates_server_step_and_feddc_report():
    run = RunMetrics()
    run.add_contribution(0, "site-1", {"accuracy": 0.5}, num_samples=10)
    run.add_contribution(0, "site-2", {"accuracy": 0.9}, PRIVACY, num_samples=10)
    report = {"accepted": ["site-1"], "excluded": {"site-2": "its update norm is too large", "site-3": "late"}}
    means, removed = run.round_done(
        0, report, server_step={"optimizer": "sgd", "lr": 1.0}, feddc_report={"aggregated": True}
    )
    assert removed == ["site-2"]  # site-3 had no metrics recorded
    assert means == {"accuracy": 0.5, "num_samples": 10}
    entry = run.rounds[0]
    assert set(entry["sites"]) == {"site-1"} and set(entry["privacy"]) == {"site-1"}
    assert entry["accepted"] == ["site-1"] and entry["excluded"] == report["excluded"]
    assert entry["server"] == {"optimizer": "sgd", "lr": 1.0} and entry["feddc"] == {"aggregated": True}


def test_validation_of_the_global_model():
    run = RunMetrics()
    assert run.add_validation(1, "site-1", {"accuracy": np.float32(0.75)}) == ({"accuracy": 0.75}, [])
    metrics, dropped = run.add_validation(1, "site-2", {"confusion": np.eye(2)})
    assert metrics is None and len(dropped) == 1 and "'confusion'" in dropped[0]
    assert run.rounds[1]["validation"] == {"site-1": {"accuracy": 0.75}}
    assert run.add_validation(2, "site-1", None) == ({}, [])


def test_the_metrics_document(tmp_path):
    run = RunMetrics("m", "job-1", "run-1")
    run.num_rounds = 3
    run.add_contribution(1, "site-2", {"accuracy": 0.5}, num_samples=1)
    run.add_contribution(0, "site-1", {"accuracy": 0.4}, num_samples=1)
    run.round_done(0)
    run.stopped_early = "after round 2: privacy budget"
    doc = run.document()
    assert {k: doc[k] for k in ("model_id", "job_id", "run_id", "num_rounds", "stopped_early")} == {
        "model_id": "m",
        "job_id": "job-1",
        "run_id": "run-1",
        "num_rounds": 3,
        "stopped_early": "after round 2: privacy budget",
    }
    assert [r["round"] for r in doc["rounds"]] == [1, 2]  # 1-based, in order
    assert run.sites() == ["site-1", "site-2"]
    path = run.write(tmp_path / "metrics.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(doc))


def test_a_value_json_cannot_hold_is_refused_naming_its_key(tmp_path):
    run = RunMetrics()
    run.round_done(0, server_step={"step_norm": float("inf")})
    with pytest.raises(JSONValueError, match=r"rounds\[0\].server.step_norm"):
        run.write(tmp_path / "metrics.json")
    assert not (tmp_path / "metrics.json").exists()


def test_run_metrics_imports_no_nvflare():
    code = "import sys, flip.run_metrics; print(sorted(m for m in sys.modules if m.split('.')[0] == 'nvflare'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.unit
def test_a_labels_values_keep_the_order_the_site_sent_them_in_whatever_order_they_arrive():
    """FLIP apps send a label once per class; NVFlare delivers federated events asynchronously, so the server may get
    them out of order (seen in the simulator: 0.75 before 0.5). The site's order stamp (seq) decides."""
    metrics = RunMetrics()
    for value, seq in ((0.75, 30), (0.5, 10), (0.6, 20)):
        assert metrics.add_flip_metric(1, "site-1", "TRAIN-F1-SCORE", value, seq)
    metrics.add_flip_metric(1, "site-1", "TRAIN-F1-SCORE", 0.9)  # no stamp (an older site): after the stamped ones
    [entry] = metrics.document()["flip_metrics"]
    assert entry["sites"]["site-1"]["TRAIN-F1-SCORE"] == [0.5, 0.6, 0.75, 0.9]


def test_each_epsilon_is_labelled_with_its_guarantee_delta_and_accountant(tmp_path):
    """metrics.json, the hub's metric names and the report say whether an ε is per patient (record level, DP-SGD
    at the site) or per hospital (client level), with δ and the accountant. Before, both were ``dp_epsilon``."""
    import html

    from flip.platform.flip_api import training_metrics
    from flip.report import write_summary

    record = {
        "filter": "SitePrivacyPolicy",
        "site_policy": True,
        "level": "record",
        "epsilon": 2.5,
        "delta": 1e-5,
        "accountant": "prv",
        "max_epsilon": 8.0,
        "max_grad_norm": 1.0,
        "noise_multiplier": 1.1,
        "sample_rate": 0.1,
        "steps": 90,
    }
    client = {
        "filter": "GaussianPrivacy",
        "level": "client",
        "epsilon": 4.0,
        "delta": 1e-6,
        "accountant": "rdp",
        "max_epsilon": 8.0,
        "clip_norm": 1.0,
        "noise_multiplier": 2.0,
    }
    run = RunMetrics("m", "job-1", "run-1")
    site_1, _ = run.add_contribution(0, "site-1", {"update_norm": 1.0}, [record], num_samples=64)
    site_2, _ = run.add_contribution(0, "site-2", {"update_norm": 1.0}, [client], num_samples=1)
    run.round_done(0)
    assert site_1["dp_epsilon/record-level/delta-1e-05/prv"] == 2.5 and "dp_epsilon" not in site_1
    assert site_2["dp_epsilon/client-level/delta-1e-06/rdp"] == 4.0
    doc = json.loads(json.dumps(run.document()))
    assert doc["differential_privacy"]["site-1"] == {
        "level": "record",
        "epsilon": 2.5,
        "delta": 1e-5,
        "accountant": "prv",
        "max_epsilon": 8.0,
        "filter": "SitePrivacyPolicy",
    }
    assert doc["differential_privacy"]["site-2"]["level"] == "client"
    # the hub takes the labelled names as FLIP TrainingMetrics labels
    assert training_metrics("site-1", 1, "dp_epsilon/record-level/delta-1e-05/prv", 2.5)["label"].startswith(
        "dp_epsilon/record-level"
    )
    page = html.unescape(
        write_summary({**run.document(), "sites": run.sites()}, tmp_path / "index.html", None).read_text()
    )
    assert "record-level (ε, δ)-DP (protects each patient's records): ε spent 2.5 of 8 at δ 1e-05 (prv" in page
    assert "client-level (ε, δ)-DP (protects each hospital's whole contribution): ε spent 4 of 8 at δ 1e-06" in page
