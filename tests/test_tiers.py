"""Every test carries a tier marker (unit, s3, simulator, e2e): tests/conftest.py stops a session that collects one
without, whatever ``-m`` selects."""

from __future__ import annotations

import subprocess
import sys

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


def test_each_module_is_one_worker_group_and_the_standard_run_modules_share_one(tmp_path):
    """``make`` runs ``--dist loadgroup``: a module's fixtures (a simulator run) start on one worker only, and the
    modules using the session's ``standard_run`` share a worker so that run happens once."""
    (tmp_path / "conftest.py").write_text(
        "import pytest\n"
        "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n\n\n"
        "@pytest.fixture(scope='session')\n"
        "def standard_run():\n"
        "    return 1\n\n\n"
        "def pytest_collection_finish(session):\n"
        "    for item in session.items:\n"
        "        print('GROUP', item.nodeid, item.get_closest_marker('xdist_group').kwargs['name'])\n"
    )
    test = "import pytest\n\n\n@pytest.mark.unit\ndef test_{0}({1}):\n    pass\n\n\n@pytest.mark.unit\ndef test_{0}_too():\n    pass\n"
    (tmp_path / "test_a.py").write_text(test.format("a", "standard_run"))
    (tmp_path / "test_b.py").write_text(test.format("b", "standard_run"))
    (tmp_path / "test_c.py").write_text(test.format("c", ""))
    done = _collect(tmp_path, "-s")
    assert done.returncode == pytest.ExitCode.OK, done.stdout + done.stderr
    groups = dict(line.split()[1:] for line in done.stdout.splitlines() if line.startswith("GROUP"))
    assert groups == {
        "test_a.py::test_a": "standard_run",
        "test_a.py::test_a_too": "standard_run",
        "test_b.py::test_b": "standard_run",
        "test_b.py::test_b_too": "standard_run",
        "test_c.py::test_c": "test_c.py",
        "test_c.py::test_c_too": "test_c.py",
    }
