"""The FL API service's settings (environment prefix ``FLIP_API_``) and the rules its key follows.

The service is ours; FLIP's own FL API has no authentication. Ours checks one key in one header on every route but
``/health/`` and ``/openapi.json``. The key comes from ``FLIP_API_KEY`` or, better, from a file only the service's
user can read (``FLIP_API_KEY_FILE``, mode 0600 or stricter); a service without a key is refused unless it listens
on a loopback address and ``--insecure-loopback`` says so.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flip.checks import check_bucket_name, check_path_name, check_str
from flip.errors import SettingsError
from flip.platform.http import check_header_name, is_host_name, is_loopback

ENV_PREFIX = "FLIP_API_"
DEFAULT_KEY_HEADER = "X-Internal-Service-Key"
#: the shortest key accepted (characters)
MIN_KEY_LENGTH = 16
#: the longest trust name accepted (characters)
MAX_TRUST_NAME = 128
_SECRET_FIELDS = {"key"}


def check_trust_sites(value: Any) -> dict[str, str]:
    """Return the trust -> site mapping of ``FLIP_API_TRUST_SITES`` (a JSON object or a dict), checked.

    Raises:
        ValueError: not a JSON object of trust names to site names, a site name that is not a safe path name, or
            two trusts mapped to one site (named).
    """
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f'must be a JSON object such as {{"Trust_1": "hospital-a"}}: {exc}') from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object of trust names to site names, got a {type(value).__name__}")
    mapping: dict[str, str] = {}
    for trust, site in value.items():
        check_str("trust name", trust, max_length=MAX_TRUST_NAME)
        mapping[trust] = check_path_name("site name", site)
    sites = list(mapping.values())
    doubled = sorted({s for s in sites if sites.count(s) > 1})
    if doubled:
        raise ValueError(f"maps several trusts to site(s) {doubled}: each trust is one site")
    return mapping


@dataclass(frozen=True)
class BundleHost:
    """A host whose (pre-signed) URLs may name bundle files: ``https://`` (``http://`` only when the entry says so,
    or for a loopback host), on ``port`` when given, else on any port of that scheme's default."""

    host: str
    port: int | None = None
    http: bool = False

    def allows(self, scheme: str, host: str, port: int | None) -> bool:
        """True if a URL of ``scheme``, ``host`` and ``port`` (None: the scheme's default) is on this host."""
        if host.lower() != self.host or scheme not in ("https", "http"):
            return False
        if scheme == "http" and not (self.http or is_loopback(host)):
            return False
        default = 80 if scheme == "http" else 443
        return (port or default) == (self.port or default)

    def __str__(self) -> str:
        return ("http://" if self.http else "") + self.host + (f":{self.port}" if self.port else "")


def check_bundle_hosts(value: Any) -> frozenset[BundleHost]:
    """The hosts of ``FLIP_API_BUNDLE_HOSTS``: comma-separated ``host``, ``host:port`` or ``http://host[:port]``
    (plain http for that host: a private network's S3), e.g. ``flip-bundles.s3.eu-west-2.amazonaws.com``.

    Raises:
        ValueError: an entry that is not a host, a port out of range, a path, credentials or another scheme (named).
    """
    if value is None or value == "":
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    hosts = set()
    for item in items:
        entry = item.strip() if isinstance(item, str) else item
        if not isinstance(entry, str) or not entry:
            raise ValueError(f"expected a comma-separated list of hosts, got an entry {item!r}")
        http = entry.lower().startswith("http://")
        try:
            parts = urlsplit(entry if "://" in entry else f"https://{entry}")
            port = parts.port
        except ValueError:
            raise ValueError(f"{entry!r} is not host[:port]") from None
        host = (parts.hostname or "").lower()
        if (
            parts.scheme.lower() not in ("https", "http")
            or "@" in parts.netloc
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or not is_host_name(host)
            or port == 0
        ):
            raise ValueError(f"{entry!r} is not host, host:port or http://host[:port] (no path, user or query)")
        hosts.add(BundleHost(host, port, http))
    return frozenset(hosts)


class ApiSettings(BaseSettings):
    """The FL API service's settings, from ``FLIP_API_*`` variables (the command's options win).

    Attributes:
        key_header: the header that carries the key (``FLIP_API_KEY_HEADER``). Default ``X-Internal-Service-Key``,
            the header FLIP's hub sends its internal service key in.
        key: the key (``FLIP_API_KEY``); never printed.
        key_file: a file holding the key (``FLIP_API_KEY_FILE``), readable by its owner only; one of the two.
        bundle_bucket: the S3 bucket ``s3://`` bundle URLs may name (``FLIP_API_BUNDLE_BUCKET``), read with boto3's
            own chain (``AWS_*``).
        bundle_root: the folder ``file://`` bundle URLs must lie under (``FLIP_API_BUNDLE_ROOT``).
        bundle_hosts: the hosts whose ``https://`` URLs (FLIP's hub's pre-signed S3 links) may name bundle files
            (``FLIP_API_BUNDLE_HOSTS``, see :func:`check_bundle_hosts`).
        trust_sites: trust name -> site name (``FLIP_API_TRUST_SITES``, a JSON object); a trust not in it is the
            site of the same name (FLIP's hub sends FL kit slot names, the sites' provisioned names).
        trust_sites_file: the same mapping in a JSON file (``FLIP_API_TRUST_SITES_FILE``); one of the two.
        username: the admin identity (``FLIP_API_USERNAME``). Default: the admin kit's own.
        max_bundle_mb: the largest bundle, all files together, in MiB (``FLIP_API_MAX_BUNDLE_MB``, 1-65536).
            Default 4096.
        max_bundle_files: the most files a bundle may have (``FLIP_API_MAX_BUNDLE_FILES``, 1-100000). Default 2000.
        connect_timeout: seconds to reach the FL server at start and on a reconnection
            (``FLIP_API_CONNECT_TIMEOUT``, (0, 300]). Default 30.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    key_header: str = DEFAULT_KEY_HEADER
    key: SecretStr | None = Field(default=None, repr=False)
    key_file: Path | None = None
    bundle_bucket: str | None = None
    bundle_root: Path | None = None
    bundle_hosts: Annotated[frozenset[BundleHost], NoDecode] = frozenset()
    trust_sites: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    trust_sites_file: Path | None = None
    username: str | None = None
    max_bundle_mb: int = Field(default=4096, ge=1, le=65536)
    max_bundle_files: int = Field(default=2000, ge=1, le=100_000)
    connect_timeout: float = Field(default=30.0, gt=0, le=300)

    @field_validator("key_header")
    @classmethod
    def _header(cls, value: str) -> str:
        return check_header_name(value)

    @field_validator("bundle_bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        return None if not value else check_bucket_name(value)

    @field_validator("bundle_hosts", mode="before")
    @classmethod
    def _bundle_hosts(cls, value: Any) -> frozenset[BundleHost]:
        return check_bundle_hosts(value)

    @field_validator("trust_sites", mode="before")
    @classmethod
    def _trust_sites(cls, value: Any) -> dict[str, str]:
        return check_trust_sites(value)

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        return None if value is None else check_str("username", value, max_length=256)


def load_api_settings(**overrides: Any) -> ApiSettings:
    """Read the service's settings from the environment (``overrides`` win, None ones are left out).

    Raises:
        SettingsError: a variable is invalid; the message names it and never shows the key.
    """
    try:
        return ApiSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            message = err["msg"].removeprefix("Value error, ")
            if name in _SECRET_FIELDS:
                message = "invalid value (not shown)"
            problems.append(f"{ENV_PREFIX}{name.upper()}: {message}" if name else message)
        raise SettingsError("invalid FL API settings: " + "; ".join(problems)) from None


def read_key(settings: ApiSettings) -> str | None:
    """Return the service's key (``FLIP_API_KEY``, or the file ``FLIP_API_KEY_FILE``), or None if neither is set.

    Raises:
        SettingsError: both are set; the file cannot be read, is open to its group or others, or holds no key; the
            key is shorter than 16 characters or holds a character a header cannot carry (never shown).
    """
    if settings.key is not None and settings.key_file is not None:
        raise SettingsError("FLIP_API_KEY and FLIP_API_KEY_FILE are both set: give the service's key one way")
    if settings.key_file is not None:
        path = settings.key_file
        try:
            mode = stat.S_IMODE(path.stat().st_mode)  # the file itself: a secret mounted through a link is fine
            if mode & 0o077:
                raise SettingsError(
                    f"FLIP_API_KEY_FILE: {path} is open to other users (mode {mode:04o}): make it "
                    f"readable by the service's user only (chmod 600 {path})"
                )
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"FLIP_API_KEY_FILE: cannot read {path} ({type(exc).__name__})") from None
        key, where = text.strip(), "FLIP_API_KEY_FILE"
    elif settings.key is not None:
        key, where = settings.key.get_secret_value(), "FLIP_API_KEY"
    else:
        return None
    if len(key) < MIN_KEY_LENGTH or not all(33 <= ord(c) <= 126 for c in key):
        raise SettingsError(
            f"{where}: the key must be at least {MIN_KEY_LENGTH} printable ASCII characters "
            "without spaces (e.g. `openssl rand -hex 32`)"
        )
    return key


def read_trust_sites(settings: ApiSettings) -> dict[str, str]:
    """Return the trust -> site mapping of ``FLIP_API_TRUST_SITES`` or ``FLIP_API_TRUST_SITES_FILE``.

    Raises:
        SettingsError: both are set, or the file cannot be read or is not such a mapping (named).
    """
    if settings.trust_sites_file is None:
        return dict(settings.trust_sites)
    if settings.trust_sites:
        raise SettingsError("FLIP_API_TRUST_SITES and FLIP_API_TRUST_SITES_FILE are both set: give the mapping once")
    try:
        return check_trust_sites(settings.trust_sites_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(
            f"FLIP_API_TRUST_SITES_FILE: cannot read {settings.trust_sites_file} ({type(exc).__name__})"
        ) from None
    except ValueError as exc:
        raise SettingsError(f"FLIP_API_TRUST_SITES_FILE {settings.trust_sites_file}: {exc}") from None


def kit_username(admin_dir: Path) -> str:
    """Return the admin identity the kit was provisioned for (``startup/fed_admin.json``'s ``admin.username``).

    Raises:
        SettingsError: the kit has no readable ``fed_admin.json`` with a username (names the file).
    """
    path = Path(admin_dir) / "startup" / "fed_admin.json"
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["admin"]["username"]
        return check_str("username", name, max_length=256)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SettingsError(
            f"--admin-dir {admin_dir}: {path} names no admin username ({type(exc).__name__}): give "
            "an admin's startup kit, or --username"
        ) from None


@dataclass(frozen=True)
class ServiceConfig:
    """What the running service needs, decided once at start.

    Attributes:
        key: the key every protected route requires (None: no key, loopback only).
        key_header: the header that carries it.
        bundle_bucket, bundle_root, bundle_hosts: where bundle URLs may point (None, empty: not that kind).
        trust_sites: trust name -> site name.
        max_bundle_bytes, max_bundle_files: a bundle's bounds.
    """

    key: str | None = field(repr=False)
    key_header: str = DEFAULT_KEY_HEADER
    bundle_bucket: str | None = None
    bundle_root: Path | None = None
    bundle_hosts: frozenset[BundleHost] = frozenset()
    trust_sites: dict[str, str] = field(default_factory=dict)
    max_bundle_bytes: int = 4096 * 1024 * 1024
    max_bundle_files: int = 2000


def service_config(settings: ApiSettings, host: str, insecure_loopback: bool = False) -> ServiceConfig:
    """The running service's configuration: the key rule applied, the bundle root resolved.

    Args:
        settings: the service's settings.
        host: the address the service listens on.
        insecure_loopback: allow no key, on a loopback address only.

    Raises:
        SettingsError: no key and not (``insecure_loopback`` on a loopback host); a bad key or mapping; a bundle root
            that is not a folder (each named).
    """
    key = read_key(settings)
    if key is None and not (insecure_loopback and is_loopback(host)):
        if insecure_loopback:
            raise SettingsError(
                f"--insecure-loopback serves without a key on a loopback address only (127.0.0.1, "
                f"::1, localhost), not on {host!r}: set FLIP_API_KEY_FILE"
            )
        raise SettingsError(
            "the FL API needs a key: set FLIP_API_KEY_FILE (a file only the service's user reads) or "
            "FLIP_API_KEY; callers send it in the "
            f"{settings.key_header} header (for a trial on "
            "127.0.0.1 only: --insecure-loopback)"
        )
    root = None
    if settings.bundle_root is not None:
        root = settings.bundle_root.expanduser().resolve()
        if not root.is_dir():
            raise SettingsError(f"FLIP_API_BUNDLE_ROOT: {settings.bundle_root} is not a folder")
    return ServiceConfig(
        key=key,
        key_header=settings.key_header,
        bundle_bucket=settings.bundle_bucket,
        bundle_root=root,
        bundle_hosts=settings.bundle_hosts,
        trust_sites=read_trust_sites(settings),
        max_bundle_bytes=settings.max_bundle_mb * 1024 * 1024,
        max_bundle_files=settings.max_bundle_files,
    )
