"""Every test carries a tier marker (unit, s3, simulator, e2e): tests/conftest.py stops a session that collects one
without, whatever ``-m`` selects."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TIERS

pytestmark = pytest.mark.unit


def _collect(folder, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *options, str(folder)],
        cwd=folder,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def suite(tmp_path):
    """A small suite under tests/conftest.py's rule: one test per tier, one test without a marker."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    (tmp_path / "test_some.py").write_text(
        "import pytest\n\n"
        + "".join(f"@pytest.mark.{tier}\ndef test_{tier}():\n    pass\n\n\n" for tier in TIERS)
        + "def test_forgotten():\n"
        "    pass\n"
    )
    return tmp_path


@pytest.mark.parametrize("options", [(), ("-m", "unit or s3")])
def test_a_test_without_a_tier_marker_stops_the_session(suite, options):
    done = _collect(suite, *options)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "1 test(s) carry no tier marker" in done.stderr and "test_some.py::test_forgotten" in done.stderr
    for tier in TIERS:
        assert f"test_some.py::test_{tier}" not in done.stderr


def test_a_suite_whose_tests_are_all_marked_is_collected(suite):
    source = (suite / "test_some.py").read_text()
    (suite / "test_some.py").write_text(source.replace("def test_forgotten", "@pytest.mark.unit\ndef test_forgotten"))
    done = _collect(suite)
    assert done.returncode == pytest.ExitCode.OK, done.stdout + done.stderr
    assert f"{len(TIERS) + 1} tests collected" in done.stdout


def test_the_session_standard_run_is_used_by_one_module_only():
    """``make`` runs ``--dist loadfile`` (each test module on one worker): a session fixture that starts a simulator
    run would start again on every worker whose module uses it, so the standard run has one module."""
    users = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "tests").rglob("test_*.py")
        if path.resolve() != Path(__file__).resolve() and re.search(r"\bstandard_run\b", path.read_text())
    )
    assert users == ["tests/integration/test_standard_job.py"]
