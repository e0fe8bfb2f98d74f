"""Which site this process serves, and where the dev platform finds that site's data (FLIP's dev variables).

FLIP's dev platform reads one CSV (``DEV_DATAFRAME``) and one image root (``DEV_IMAGES_DIR``) for every site. To give
each simulated site its own data, ``flip simulate --site-data SITE=CSV:IMAGES_DIR`` puts a mapping in
``FLIP_SITE_DATA`` (JSON ``{"<site>": {"dataframe": "<abs path>", "images": "<abs path>"}}``) and flip's executors
name the site a process serves (:func:`set_current_site` / :func:`site_context`) before they create or call the
user's objects. NVFlare 2.9's simulator runs each client's tasks in a subprocess with a copy of the parent's
environment, one client per process, so a process-wide "current site" is exact there and in a real deployment.

The rule (one place, :meth:`DevData.dataframe_path` / :meth:`DevData.images_root`): a site with an entry in
``FLIP_SITE_DATA`` uses it; any other site (or a process whose site is not known) uses ``DEV_DATAFRAME`` /
``DEV_IMAGES_DIR``; if neither is set the call fails naming the site and the variables.

In prod the same holds for a site's trust: ``FLIP_SITE_ENV`` (``flip simulate --site-env SITE:VAR=VALUE``) gives
each simulated site its own trust variables (:data:`SITE_ENV_VARS` only: no hub variable), over the process's own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flip.checks import check_path_name, check_str
from flip.errors import PlatformError

SITE_DATA_VAR = "FLIP_SITE_DATA"
DATAFRAME_VAR = "DEV_DATAFRAME"
IMAGES_VAR = "DEV_IMAGES_DIR"
_SITE_DATA_KEYS = ("dataframe", "images")

_lock = threading.Lock()
_current: str | None = None


def current_site() -> str | None:
    """Return the name of the site this process serves, or None if no executor has set it."""
    return _current


def set_current_site(name: str | None) -> None:
    """Name the site this process serves (None: not known).

    Raises:
        ValueError: ``name`` is not a safe site name (see :func:`flip.checks.check_path_name`).
    """
    global _current
    checked = None if name is None else check_path_name("site name", name)
    with _lock:
        _current = checked


@contextmanager
def site_context(name: str | None) -> Iterator[str | None]:
    """Serve ``name`` inside the block, then restore the site served before."""
    previous = current_site()
    set_current_site(name)
    try:
        yield name
    finally:
        set_current_site(previous)


@dataclass(frozen=True)
class SiteData:
    """One site's dev data: the CSV ``get_dataframe`` returns and the root of its ``<accession_id>/`` folders."""

    dataframe: Path
    images: Path

    def to_json(self) -> dict[str, str]:
        return {"dataframe": str(self.dataframe), "images": str(self.images)}


def _absolute(site: str, key: str, value: Any) -> Path:
    try:
        text = check_str(f"{SITE_DATA_VAR}[{site!r}][{key!r}]", value, max_length=4096)
    except ValueError as exc:
        raise ValueError(f"{exc} (an absolute path)") from None
    path = Path(text)
    if not path.is_absolute():
        raise ValueError(f"{SITE_DATA_VAR}[{site!r}][{key!r}] must be an absolute path, got {text!r}")
    return path


def check_site_data(raw: Any) -> dict[str, SiteData]:
    """Return the per-site data mapping of ``FLIP_SITE_DATA`` (its JSON text, or the decoded mapping), checked.

    Raises:
        ValueError: not JSON, not an object of ``{site: {"dataframe": <absolute path>, "images": <absolute path>}}``,
            a site name that is not safe, or a path that is not absolute (each named).
    """
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{SITE_DATA_VAR} must be a JSON object, got text that is not JSON ({exc})") from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{SITE_DATA_VAR} must be a JSON object of sites, got {type(raw).__name__}")
    sites: dict[str, SiteData] = {}
    for site, entry in raw.items():
        site = check_path_name(f"{SITE_DATA_VAR}: site name", site)
        if isinstance(entry, SiteData):
            entry = entry.to_json()
        if not isinstance(entry, Mapping) or sorted(entry) != sorted(_SITE_DATA_KEYS):
            shown = sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__
            raise ValueError(
                f"{SITE_DATA_VAR}[{site!r}] must be an object with exactly the keys "
                f"{list(_SITE_DATA_KEYS)}, got {shown}"
            )
        sites[site] = SiteData(
            dataframe=_absolute(site, "dataframe", entry["dataframe"]),
            images=_absolute(site, "images", entry["images"]),
        )
    return sites


def site_data_json(sites: Mapping[str, SiteData]) -> str:
    """The ``FLIP_SITE_DATA`` value for ``sites`` (checked again by whoever reads it)."""
    return json.dumps({name: data.to_json() for name, data in check_site_data(dict(sites)).items()}, sort_keys=True)


@dataclass(frozen=True)
class DevData:
    """The dev platform's data variables: ``DEV_DATAFRAME``, ``DEV_IMAGES_DIR`` and ``FLIP_SITE_DATA``."""

    dataframe: str = ""
    images_dir: str = ""
    sites: Mapping[str, SiteData] = field(default_factory=dict)

    def _missing(self, site: str | None, variable: str) -> PlatformError:
        who = f"site {site!r}" if site else "this process (its site is not known)"
        entry = f"{SITE_DATA_VAR} has no entry for it" if site else f"{SITE_DATA_VAR} is not used without a site"
        return PlatformError(
            f"no dev data for {who}: {entry} and {variable} is not set (set {variable}, or run "
            f"`flip simulate --site-data SITE=CSV:IMAGES_DIR`)"
        )

    def dataframe_path(self, site: str | None = None) -> Path:
        """Return the CSV of ``site`` (default: the current site) by the module's rule.

        Raises:
            PlatformError: neither an entry for the site nor ``DEV_DATAFRAME`` (names the site and both variables).
        """
        site = current_site() if site is None else site
        if site in self.sites:
            return self.sites[site].dataframe
        if self.dataframe:
            return Path(self.dataframe).expanduser().absolute()
        raise self._missing(site, DATAFRAME_VAR)

    def images_root(self, site: str | None = None) -> Path:
        """Return the image root of ``site`` (default: the current site) by the module's rule.

        Raises:
            PlatformError: neither an entry for the site nor ``DEV_IMAGES_DIR`` (names the site and both variables).
        """
        site = current_site() if site is None else site
        if site in self.sites:
            return self.sites[site].images
        if self.images_dir:
            return Path(self.images_dir).expanduser().absolute()
        raise self._missing(site, IMAGES_VAR)


# -- FLIP_SITE_ENV: each simulated site's trust variables -------------------------------------------------------------
SITE_ENV_VAR = "FLIP_SITE_ENV"
#: the variables FLIP_SITE_ENV may set for a site: its trust's services, nothing of the hub's
SITE_ENV_VARS = (
    "DATA_ACCESS_API_URL",
    "IMAGING_API_URL",
    "NET_ID",
    "TRUST_INTERNAL_SERVICE_KEY_HEADER",
    "TRUST_INTERNAL_SERVICE_KEY",
    "IMAGES_DIR",
)
_SECRET_SITE_VARS = {"TRUST_INTERNAL_SERVICE_KEY"}


def check_site_env(raw: Any) -> dict[str, dict[str, str]]:
    """Return the per-site trust variables of ``FLIP_SITE_ENV`` (its JSON text, or the decoded mapping), checked.

    ``{"<site>": {"DATA_ACCESS_API_URL": "...", "IMAGING_API_URL": "...", "TRUST_INTERNAL_SERVICE_KEY": "...",
    ...}}``: a site's entry overrides the process's own variables of those names for that site only. Only the
    site-side variables of :data:`SITE_ENV_VARS` are allowed, so no hub setting can reach a site this way.

    Raises:
        ValueError: not JSON, not an object of objects, an unsafe site name, a variable outside SITE_ENV_VARS, or a
            value that is not a string of at most 4096 characters without control characters (each named; a key's
            value is never shown).
    """
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ValueError(f"{SITE_ENV_VAR} must be a JSON object, got text that is not JSON") from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{SITE_ENV_VAR} must be a JSON object of sites, got {type(raw).__name__}")
    sites: dict[str, dict[str, str]] = {}
    for site, entry in raw.items():
        site = check_path_name(f"{SITE_ENV_VAR}: site name", site)
        if not isinstance(entry, Mapping):
            raise ValueError(f"{SITE_ENV_VAR}[{site!r}] must be an object of variables, got {type(entry).__name__}")
        variables = {}
        for var, value in entry.items():
            if var not in SITE_ENV_VARS:
                raise ValueError(
                    f"{SITE_ENV_VAR}[{site!r}] may set only a site's trust variables {list(SITE_ENV_VARS)}, got {var!r}"
                )
            if not (isinstance(value, str) and len(value) <= 4096 and value.isprintable()):
                shown = "(not shown)" if var in _SECRET_SITE_VARS else repr(value)
                raise ValueError(
                    f"{SITE_ENV_VAR}[{site!r}][{var!r}] must be a string of at most 4096 printable "
                    f"characters, got {shown}"
                )
            variables[var] = value
        sites[site] = variables
    return sites


def site_env_json(sites: Mapping[str, Mapping[str, str]]) -> str:
    """The ``FLIP_SITE_ENV`` value for ``sites`` (checked)."""
    return json.dumps(check_site_env(dict(sites)), sort_keys=True)
