"""The run report draws the curves of FLIP apps' metrics too (a FLIP app sends its numbers with send_metrics_value,
not as our trainer's return value): before, such a run's report had no curves.png at all."""

from __future__ import annotations

import pytest
from PIL import Image

from flip.report import MAX_FLIP_CURVES, _flip_series, write_report

pytestmark = pytest.mark.unit


def _flip_metrics(labels: list[str], rounds: int = 3) -> list[dict]:
    return [
        {
            "round": r,
            "sites": {
                site: {label: [1.0 / r + i, 2.0 / r + i] for label in labels}
                for i, site in enumerate(("site-1", "site-2"))
            },
        }
        for r in range(1, rounds + 1)
    ]


def test_flip_metrics_become_one_curve_per_label_and_site_with_the_rounds_mean():
    series = _flip_series(_flip_metrics(["TRAIN_LOSS", "VAL-F1-SCORE"]))
    assert list(series) == ["TRAIN_LOSS", "VAL-F1-SCORE"]
    assert series["TRAIN_LOSS"]["site-2"] == [(1, 2.5), (2, 1.75), (3, 1.5)]  # mean of 1/r + 1 and 2/r + 1


def test_only_the_first_labels_are_drawn():
    labels = [f"L{i}" for i in range(MAX_FLIP_CURVES + 3)]
    assert list(_flip_series(_flip_metrics(labels))) == labels[:MAX_FLIP_CURVES]


def test_a_flip_app_run_report_has_curves(tmp_path):
    written = write_report({"rounds": [], "flip_metrics": _flip_metrics(["TRAIN_LOSS"]), "statuses": []}, tmp_path)
    assert "curves.png" in written
    with Image.open(written["curves.png"]) as image:
        assert image.size[0] > 300 and image.size[1] > 200
    assert 'src="curves.png"' in written["index.html"].read_text()
