"""Hostile inputs to ``flip demo``: it deletes only a folder it created, and checks its arguments before it
touches the disk.

Each test failed on the old code, which ran ``shutil.rmtree(--dir)`` before checking anything else: the sentinel
file a test puts in the folder was deleted (and with valid arguments the demo went on to run in the wiped folder).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flip.cli import main as flip_cli
from flip.demo.run import MARKER, prepare_workdir
from flip.errors import FlipError

pytestmark = pytest.mark.unit


def _folder_with_sentinel(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "precious"
    folder.mkdir()
    sentinel = folder / "patient-notes.txt"
    sentinel.write_text("must survive")
    return folder, sentinel


def test_demo_refuses_foreign_nonempty_dir(tmp_path, capsys):
    folder, sentinel = _folder_with_sentinel(tmp_path)
    assert flip_cli(["demo", "--dir", str(folder), "--sites", "1", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "not created by the demo" in err
    assert sentinel.read_text() == "must survive"
    assert sorted(p.name for p in folder.iterdir()) == ["patient-notes.txt"]  # not even a marker was added
    # a file given as --dir is refused too, untouched
    assert flip_cli(["demo", "--dir", str(sentinel)]) == 2
    assert str(sentinel) in capsys.readouterr().err and sentinel.read_text() == "must survive"


@pytest.mark.parametrize(
    "args, named",
    [
        (["--sites", "0"], "sites must be an integer >= 1, got 0"),
        (["--rounds", "0"], "rounds must be an integer >= 1, got 0"),
        (["--sites", "2", "--threads", "3"], "threads must be between 1 and the number of sites (2), got 3"),
        (["--threads", "0"], "threads must be an integer >= 1, got 0"),
        (["--percentile", "150"], "percentile must be a finite number in [0, 100], got 150.0"),
        (["--percentile", "nan"], "percentile must be a finite number in [0, 100], got nan"),
        (["--gamma", "-1"], "gamma must be a finite number > 0, got -1.0"),
        (["--gamma", "inf"], "gamma must be a finite number > 0, got inf"),
        (["--dp-epsilon", "0"], "dp_epsilon must be a finite number > 0, got 0.0"),
        (["--dp-epsilon", "nan"], "dp_epsilon must be a finite number > 0, got nan"),
        (["--dp-clip-norm", "-2"], "dp_clip_norm must be a finite number > 0, got -2.0"),
        (
            ["--dp-epsilon", "8", "--uncertainty", "swag"],
            "differential privacy and uncertainty 'swag' cannot be combined",
        ),
        (
            ["--dp-epsilon", "8", "--dp-level", "client", "--uncertainty", "swag"],
            "differential privacy and uncertainty 'swag' cannot be combined",
        ),
        (["--dp-epsilon", "8", "--job", "multi_stage"], "record-level DP (dp_level 'record') trains the standard"),
    ],
)
def test_demo_checks_arguments_before_touching_disk(tmp_path, capsys, args, named):
    folder, sentinel = _folder_with_sentinel(tmp_path)
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / MARKER).write_text("")
    (marked / "old-run.txt").write_text("left by an earlier demo")
    absent = tmp_path / "absent"
    for target in (folder, marked, absent):
        assert flip_cli(["demo", "--dir", str(target), *args]) == 2
        assert named in capsys.readouterr().err
    assert sentinel.read_text() == "must survive"
    assert (marked / "old-run.txt").is_file()  # even the demo's own folder is not cleared for a bad argument
    assert not absent.exists()


def test_demo_checks_job_aggregation_and_uncertainty_before_touching_disk(tmp_path):
    from flip.demo.run import demo_runs, run_demo

    folder, sentinel = _folder_with_sentinel(tmp_path)
    for bad, named in (
        (dict(job="nope"), "job must be one of"),
        (dict(aggregation="mean"), "aggregation must be"),
        (dict(uncertainty="vibes"), "uncertainty must be one of"),
        (dict(model_test_after_each_round="yes"), "model_test_after_each_round must be True or False"),
        (dict(sites=True), "sites must be an integer >= 1, got True"),
    ):
        with pytest.raises(ValueError, match=named):
            run_demo(workdir=folder, **bad)
    assert sentinel.read_text() == "must survive"
    # every job the demo offers passes the checks with its defaults (fed_opt takes the methods too)
    assert [name for name, _ in demo_runs(job="evaluation")] == ["standard", "evaluation"]
    assert demo_runs(job="fed_opt", aggregation="fedprox")[0][1]["aggregation"] == "fedprox"
    assert demo_runs(job="multi_stage")[0][0] == "multi_stage"


def test_demo_reuses_own_marked_dir(tmp_path):
    absent = tmp_path / "new" / "demo"
    assert prepare_workdir(absent) == absent.resolve()
    assert sorted(p.name for p in absent.iterdir()) == [MARKER]
    # the demo's own folder, left by an earlier run: cleared (files, folders, symlinks) and reused, marker kept
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the demo's")
    (absent / "workspace-standard").mkdir()
    (absent / "workspace-standard" / "log.txt").write_text("old")
    (absent / "flip").symlink_to(outside, target_is_directory=True)
    (absent / "summary.txt").write_text("old")
    assert prepare_workdir(absent) == absent.resolve()
    assert sorted(p.name for p in absent.iterdir()) == [MARKER]
    assert (outside / "keep.txt").read_text() == "not the demo's"  # a symlink is removed, never followed
    # an existing empty folder is taken and marked
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_workdir(empty) == empty.resolve() and (empty / MARKER).is_file()
    # a marker that is a symlink (planted to make a foreign folder look like the demo's) does not count
    foreign, sentinel = _folder_with_sentinel(tmp_path)
    (foreign / MARKER).symlink_to(empty / MARKER)
    with pytest.raises(FlipError, match="not created by the demo"):
        prepare_workdir(foreign)
    assert sentinel.read_text() == "must survive"
