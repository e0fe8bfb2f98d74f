"""Run a job folder in NVFlare's simulator (Python API), with flip's progress lines on the console."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flip.checks import check_path_name
from flip.errors import SerializationStateError
from flip.platform.site import (
    DATAFRAME_VAR,
    IMAGES_VAR,
    SITE_DATA_VAR,
    SITE_ENV_VAR,
    SiteData,
    check_site_env,
    site_data_json,
    site_env_json,
)

_LOG_CONFIG = "log_config.json"

#: the variable torch (OpenMP) reads at import for its number of threads
THREADS_VAR = "OMP_NUM_THREADS"


def site_threads(threads: int, cores: int | None = None) -> int:
    """Torch threads for each simulated site when ``threads`` sites train at once on ``cores`` cores (default: the
    cores this process may use): the cores shared out, at least one each."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // threads)


@contextmanager
def isolated_path() -> Iterator[None]:
    """Within the block, neither ``sys.path`` nor ``sys.modules`` holds the app folders (or their modules) that flip
    imported user code from in this process; after it, both are as before (NVFlare's simulator appends the job's
    server custom/ folder to ``sys.path`` and imports the job's modules).

    NVFlare builds each simulated site's ``PYTHONPATH`` from this process's ``sys.path`` with the job's custom/ folder
    last, and its server (started from this process) imports the job's ``models`` by name: an app folder or module
    left by an earlier job comes first, and the run trains another app's model (seen as a shape error at the sites,
    or the server's model not fitting the sites')."""
    from flip.nvflare.executors.user_code import USER_DIRS

    def from_user_dir(module, folders) -> bool:
        file = getattr(module, "__file__", None)
        return bool(file) and str(Path(file).resolve().parent) in folders

    before_path = list(sys.path)
    folders = {str(Path(p).resolve()) for p in USER_DIRS}
    stale = {name: module for name, module in list(sys.modules.items()) if from_user_dir(module, folders)}
    for name in stale:
        del sys.modules[name]
    sys.path[:] = [p for p in before_path if p not in USER_DIRS]
    try:
        yield
    finally:
        added = {str(Path(p).resolve()) for p in sys.path if p and p not in before_path}
        for name, module in list(sys.modules.items()):
            if from_user_dir(module, added):
                del sys.modules[name]
        sys.path[:] = before_path
        sys.modules.update(stale)


@contextmanager
def shared_cores(threads: int) -> Iterator[str]:
    """Within the block, processes started from this one (the simulator's sites) run torch on their share of the
    cores (:func:`site_threads`; ``OMP_NUM_THREADS``), unless the caller set ``OMP_NUM_THREADS`` itself. Yield the
    value the sites get.

    Each site's torch otherwise starts one thread per core: N sites on one machine run N× the threads there are
    cores, and a step that takes 0.3 s alone takes 4-6 s when two sites train at once on 2 cores (measured with a
    100M-parameter model; benchmarks/round_overhead.py)."""
    own = os.environ.get(THREADS_VAR)
    if own:
        yield own
        return
    os.environ[THREADS_VAR] = value = str(site_threads(threads))
    try:
        yield value
    finally:
        if own is None:
            os.environ.pop(THREADS_VAR, None)
        else:
            os.environ[THREADS_VAR] = own


def prepare_serialization() -> None:
    """Register NVFlare's decomposers in this process, then check a Shareable keeps its headers on the wire.

    The simulator forks its server from this process, and the server keeps this process's fobs registry. NVFlare
    registers a decomposer for a type only if none is registered yet, so a Shareable serialized here before NVFlare's
    registration (e.g. by a test helper) keeps a generic decomposer that drops its headers: the sites would get tasks
    without a name or peer context (NVFlare logs ``missing peer_ctx from client``) and every run would end STOPPED.

    Raises:
        SerializationStateError: a Shareable loses its headers in this process (the registry cannot be repaired;
            run the simulator from a fresh process).
    """
    from nvflare.apis.shareable import Shareable
    from nvflare.fuel.utils.class_loader import get_class_name
    from nvflare.fuel.utils.fobs.decomposer import DictDecomposer
    from nvflare.fuel.utils.fobs.fobs import FOBS_DECOMPOSER, Packer
    from nvflare.private.fed.utils.fed_utils import nvflare_fobs_initialize

    nvflare_fobs_initialize()
    on_the_wire = Packer(None).pack(Shareable()).get(FOBS_DECOMPOSER)
    if on_the_wire != get_class_name(DictDecomposer):
        raise SerializationStateError(
            f"this process serialized an NVFlare Shareable before NVFlare registered its decomposers: it would send "
            f"Shareables with {on_the_wire}, which drops their headers, so every simulated site would fail (missing "
            "peer context); run the simulator from a fresh process, or call flip.simulate.prepare_serialization() "
            "before any other fobs use"
        )


def site_names(sites: int | list[str]) -> list[str]:
    """``2`` -> ``["site-1", "site-2"]``; a list of names is checked and returned."""
    if isinstance(sites, int) and not isinstance(sites, bool):
        if sites < 1:
            raise ValueError(f"the number of sites must be >= 1, got {sites}")
        return [f"site-{i}" for i in range(1, sites + 1)]
    names = [check_path_name("site name", s) for s in sites]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"site names must be distinct and at least one, got {names!r}")
    return names


def parse_site_data(specs: list[str] | None, sites: list[str]) -> dict[str, SiteData]:
    """Return each ``--site-data SITE=CSV:IMAGES_DIR`` as ``{site: SiteData}`` with absolute, existing paths.

    Raises:
        ValueError: a spec is not ``SITE=CSV:IMAGES_DIR`` (exactly one ``=`` before one ``:``), names a site that
            is not simulated or a site twice, or a CSV that is not a file or an image folder that is not a folder
            (each named).
    """
    result: dict[str, SiteData] = {}
    for spec in specs or []:
        site, eq, paths = spec.partition("=")
        csv, colon, images = paths.partition(":")
        if not eq or not colon or ":" in images or not site or not csv or not images:
            raise ValueError(f"--site-data must be SITE=CSV:IMAGES_DIR (paths without ':'), got {spec!r}")
        if site not in sites:
            raise ValueError(f"--site-data names site {site!r}, which is not simulated: the sites are {sites}")
        if site in result:
            raise ValueError(f"--site-data gives site {site!r} twice")
        data = SiteData(dataframe=Path(csv).expanduser().resolve(), images=Path(images).expanduser().resolve())
        if not data.dataframe.is_file():
            raise ValueError(f"--site-data {site}: the CSV {data.dataframe} is not a file")
        if not data.images.is_dir():
            raise ValueError(f"--site-data {site}: the image folder {data.images} is not a folder")
        result[site] = data
    return result


def parse_site_env(specs: list[str] | None, sites: list[str]) -> dict[str, dict[str, str]]:
    """Return each ``--site-env SITE:VAR=VALUE`` as ``{site: {VAR: VALUE}}`` (FLIP_SITE_ENV, flip.platform.site).

    Raises:
        ValueError: a spec is not ``SITE:VAR=VALUE``, names a site that is not simulated, sets a variable twice for
            a site, or a variable a site may not have (only its trust's; a key's value is never shown).
    """
    result: dict[str, dict[str, str]] = {}
    for spec in specs or []:
        site, colon, assignment = spec.partition(":")
        var, eq, value = assignment.partition("=")
        if not colon or not eq or not site or not var:
            raise ValueError(f"--site-env must be SITE:VAR=VALUE, got {spec.partition('=')[0]!r}=...")
        if site not in sites:
            raise ValueError(f"--site-env names site {site!r}, which is not simulated: the sites are {sites}")
        if var in result.get(site, {}):
            raise ValueError(f"--site-env sets {var} twice for site {site!r}")
        result.setdefault(site, {})[var] = value
    return check_site_env(result)


def prepare_environment(
    sites: list[str], site_data: dict[str, SiteData] | None = None, site_env: dict[str, dict[str, str]] | None = None
) -> None:
    """Set what the simulator's processes inherit: FLIP_LOCAL_DIR, DEV_DATAFRAME and DEV_IMAGES_DIR made absolute
    (the simulator changes directories), FLIP_SITE_DATA from ``site_data`` and FLIP_SITE_ENV from ``site_env``
    (if given).

    Raises:
        ValueError: ``site_data`` or ``site_env`` names a site that is not simulated.
    """
    for what, given in (("site_data", site_data), ("site_env", site_env)):
        unknown = sorted(set(given or {}) - set(sites))
        if unknown:
            raise ValueError(f"{what} names sites that are not simulated: {unknown} (the sites are {sites})")
    for var in ("FLIP_LOCAL_DIR", DATAFRAME_VAR, IMAGES_VAR):
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).expanduser().resolve())
    if site_data:
        os.environ[SITE_DATA_VAR] = site_data_json(site_data)  # each site's subprocess gets a copy
    if site_env:
        os.environ[SITE_ENV_VAR] = site_env_json(site_env)


def console_log_config() -> dict:
    """NVFlare's default logging, with the console showing flip's INFO lines and everyone's warnings."""
    import nvflare.fuel.utils.log_utils as log_utils

    config = json.loads((Path(log_utils.__file__).parent / "log_config.json").read_text())
    config["filters"]["FlipConsole"] = {
        "()": "nvflare.fuel.utils.log_utils.LoggerNameFilter",
        "logger_names": ["flip"],
        "allow_all_error_logs": True,
    }
    config["formatters"]["flipConsole"] = {
        "()": "nvflare.fuel.utils.log_utils.BaseFormatter",
        "fmt": "%(asctime)s %(levelname)s %(fl_ctx)s %(message)s",
        "datefmt": "%H:%M:%S",
    }
    config["handlers"]["consoleHandler"]["filters"] = ["FlipConsole"]
    config["handlers"]["consoleHandler"]["formatter"] = "flipConsole"
    return config


def run_simulator(
    job_dir: str | Path,
    workspace: str | Path,
    sites: int | list[str] = 2,
    threads: int | None = None,
    end_run_for_all: bool = True,
    quiet: bool = True,
    site_data: dict[str, SiteData] | None = None,
    site_env: dict[str, dict[str, str]] | None = None,
) -> int:
    """Run ``job_dir`` in the simulator and return its exit code (0: the run ended without a fatal error).

    Args:
        job_dir: the job folder (e.g. ``jobs/standard``).
        workspace: the simulator's workspace (wiped at start, but its startup/ and local/).
        sites: number of sites or their names.
        threads: sites running at once (default: all); they share the machine's cores (:func:`shared_cores`).
        end_run_for_all: deliver END_RUN to every site even when threads < sites (CleanupImages needs it).
        quiet: console shows flip's lines and warnings only (full logs stay in the workspace).
        site_data: each listed site's dev CSV and image folder (``FLIP_SITE_DATA``, see flip.platform.site); the
            other sites use DEV_DATAFRAME / DEV_IMAGES_DIR. Default: leave ``FLIP_SITE_DATA`` as it is.
        site_env: each listed site's trust variables (``FLIP_SITE_ENV``: DATA_ACCESS_API_URL, IMAGING_API_URL,
            NET_ID, TRUST_INTERNAL_SERVICE_KEY(_HEADER), IMAGES_DIR), over the process's own for that site. Every
            simulated site inherits the whole mapping (one environment): a real site holds only its own.
            Default: leave ``FLIP_SITE_ENV`` as it is.
    """
    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorRunner

    names = site_names(sites)
    threads = threads or len(names)
    if not 1 <= threads <= len(names):
        raise ValueError(f"threads must be between 1 and the number of sites ({len(names)}), got {threads}")
    job_dir = Path(job_dir).resolve()
    if not (job_dir / "meta.json").is_file():
        raise ValueError(f"{job_dir} is not a job folder: it has no meta.json")
    workspace = Path(workspace).resolve()
    local = workspace / "local"
    local.mkdir(parents=True, exist_ok=True)
    if quiet:
        (local / _LOG_CONFIG).write_text(json.dumps(console_log_config(), indent=2))
    elif (local / _LOG_CONFIG).exists():
        (local / _LOG_CONFIG).unlink()
    prepare_environment(names, site_data, site_env)
    prepare_serialization()
    runner = SimulatorRunner(
        job_folder=str(job_dir),
        workspace=str(workspace),
        clients=",".join(names),
        threads=threads,
        end_run_for_all=end_run_for_all,
    )
    with shared_cores(threads), isolated_path():
        return runner.run()
