"""``flip doctor --kit DIR``: is this server, site or admin machine ready? One line per check, what is wrong first.

Checks, each printed ``ok``, ``WARN`` or ``FAIL`` with one line of detail:

- the kit: its files, its private key private (0600) and matching its certificate, the certificate signed by the
  kit's root CA, neither expiring within 60 days;
- the connection: a site or admin kit opens TLS to the server as its configuration says (host and port), checks
  the server's certificate against the kit's root CA and its common name against the server's identity (what
  NVFlare checks), presents its own certificate, and warns if the host name it dialled is not among the
  certificate's subject alternative names (NVFlare does not check them, a proxy may); a server kit does the same
  to its own ports, at the address its name has on this machine (where NVFlare binds them);
- the settings of the environment (``--env-file`` reads the unit's environment file, which must be private):
  on a server the models bucket (a real request with the S3 credentials) and, with ``FLIP_ENV=prod``, the hub's
  address (a TLS connection, no request, the key is not sent); at a site its image store, and that it holds
  neither the hub key nor the S3 credentials.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from flip.errors import FlipError
from flip.ops.certs import ROOT_CERT, WARN_DAYS, kit_cert, read_cert
from flip.ops.permissions import mode_of

OK, WARN, FAIL = "ok", "WARN", "FAIL"
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: what only the server may hold
SERVER_SECRETS = ("FLIP_HUB_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")


@dataclass(frozen=True)
class Check:
    """One line of the doctor's answer."""

    level: str
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{self.level:<4} {self.what}: {self.detail}"


@dataclass(frozen=True)
class Kit:
    """A startup kit: its folder, role (server, site or admin), name, and the files of its identity."""

    root: Path
    role: str
    name: str
    config: dict

    @property
    def startup(self) -> Path:
        return self.root / "startup"

    @property
    def cert(self) -> Path:
        return self.startup / ("server.crt" if self.role == "server" else "client.crt")

    @property
    def key(self) -> Path:
        return self.startup / ("server.key" if self.role == "server" else "client.key")


def read_kit(folder: str | Path) -> Kit:
    """Identify the kit at ``folder`` by its configuration file.

    Raises:
        FlipError: it is not a server, site or admin kit (no startup/fed_*.json).
    """
    root = Path(folder).expanduser().resolve()
    for role, name in (("server", "fed_server.json"), ("site", "fed_client.json"), ("admin", "fed_admin.json")):
        path = root / "startup" / name
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise FlipError(f"{path} is not readable JSON ({type(exc).__name__})") from exc
            if role == "site":
                who = config.get("client", {}).get("fqsn") or root.name
            elif role == "admin":
                who = config.get("admin", {}).get("username") or root.name
            else:
                who = root.name
            return Kit(root, role, str(who), config)
    raise FlipError(f"{root} is not a startup kit: no startup/fed_server.json, fed_client.json or fed_admin.json")


def read_env_file(path: str | Path) -> dict[str, str]:
    """The variables of a systemd environment file (``KEY=VALUE`` lines, ``#`` comments, optional quotes).

    Raises:
        FlipError: a line that is not ``KEY=VALUE`` (named by its number; its value is never shown).
    """
    values = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _ENV_KEY.fullmatch(key):
            raise FlipError(f"{path} line {number} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


# -- the kit --------------------------------------------------------------------------------------------------
def check_kit(kit: Kit, warn_days: int = WARN_DAYS) -> Iterator[Check]:
    """The kit's files, its key's privacy and match, its certificate's issuer and expiry."""
    required = [kit.cert, kit.key, kit.startup / ROOT_CERT]
    if kit.role != "admin":
        required.append(kit.startup / "sub_start.sh")
    missing = [p.name for p in required if not p.is_file()]
    if missing:
        yield Check(FAIL, "kit", f"{kit.startup} lacks {', '.join(missing)}: copy the whole kit again")
        return
    yield Check(OK, "kit", f"{kit.role} kit of {kit.name} at {kit.root}")
    mode = mode_of(kit.key)
    if mode & 0o077:
        yield Check(FAIL, "private key", f"{kit.key} is open to other users (mode {mode:04o}): chmod 600 {kit.key}")
    else:
        yield Check(OK, "private key", f"{kit.key.name} is private (mode {mode:04o})")
    try:
        cert = x509.load_pem_x509_certificate(kit.cert.read_bytes())
        root = x509.load_pem_x509_certificate((kit.startup / ROOT_CERT).read_bytes())
        key = serialization.load_pem_private_key(kit.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        yield Check(FAIL, "certificate", f"cannot read the kit's certificate, key or root CA ({type(exc).__name__})")
        return
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        yield Check(
            FAIL,
            "certificate",
            f"{kit.key.name} is not the key of {kit.cert.name}: the startup/ folder mixes "
            "two kits; copy the whole startup/ folder of one kit",
        )
    try:
        cert.verify_directly_issued_by(root)
    except (InvalidSignature, ValueError, TypeError) as exc:
        yield Check(
            FAIL,
            "certificate",
            f"{kit.cert.name} is not signed by the kit's {ROOT_CERT} "
            f"({type(exc).__name__}): the kit mixes two projects",
        )
    for info in (read_cert(kit.startup / ROOT_CERT, "root CA"), kit_cert(kit.root)):
        text, action = info.line(warn_days=warn_days)
        days = info.days_left()
        level = FAIL if days < 0 else WARN if action else OK
        yield Check(level, "expiry", " ".join(text.split()))


# -- the connection -------------------------------------------------------------------------------------------
def _target(kit: Kit) -> tuple[str, int, str, list[tuple[str, int]]]:
    """(host, port, the server's identity, other ports to check) the kit connects to (or, a server, listens on)."""
    if kit.role == "admin":
        admin = kit.config.get("admin", {})
        return str(admin.get("host")), int(admin.get("port", 0)), str(admin.get("server_identity")), []
    server = (kit.config.get("servers") or [{}])[0]
    host, _, port = str(server.get("service", {}).get("target", "")).rpartition(":")
    identity = str(server.get("identity") or kit.name) if kit.role == "site" else kit.name
    others = [(str(server.get("admin_server") or host), int(server["admin_port"]))] if server.get("admin_port") else []
    return host, int(port or 0), identity, others


def _tls_context(kit: Kit, check_hostname: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = check_hostname
    context.load_verify_locations(cafile=str(kit.startup / ROOT_CERT))
    context.load_cert_chain(certfile=str(kit.cert), keyfile=str(kit.key))
    return context


def _handshake(kit: Kit, host: str, port: int, server_name: str, timeout: float, check_hostname: bool) -> str:
    """TLS to ``host:port`` with the kit's identity; return the server certificate's common name."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with _tls_context(kit, check_hostname).wrap_socket(raw, server_hostname=server_name) as tls:
            peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.settimeout(1.0)
            try:  # TLS 1.3: a server that refuses the kit's certificate says so after the handshake
                tls.recv(1)
            except TimeoutError:
                pass
    common = peer.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(common[0].value) if common else ""


def tls_probe(kit: Kit, host: str, port: int, server_name: str, identity: str, timeout: float = 5.0) -> list[Check]:
    """Open TLS to ``host:port`` as the kit does: the server's certificate checked against the kit's root CA and
    its common name against the server's ``identity`` (what NVFlare 2.9 checks), the kit's certificate presented;
    and whether the certificate names ``server_name`` (its SAN: NVFlare does not check it, a proxy or another TLS
    client may)."""
    where = f"{host}:{port}"
    checks = []
    try:
        try:
            common = _handshake(kit, host, port, server_name, timeout, check_hostname=True)
            named = True
        except ssl.SSLCertVerificationError as exc:
            if "mismatch" not in str(exc.verify_message or exc).lower():
                raise
            common = _handshake(kit, host, port, server_name, timeout, check_hostname=False)
            named = False
    except ssl.SSLCertVerificationError as exc:
        return [
            Check(
                FAIL,
                "connection",
                f"{where}: the server's certificate is not from this kit's root CA "
                f"({exc.verify_message}): the kit and the server are of different projects",
            )
        ]
    except ssl.SSLError as exc:
        return [
            Check(
                FAIL,
                "connection",
                f"{where} refused this kit's certificate or TLS ({exc.reason or exc}): is "
                "the kit of this project, and has its certificate expired?",
            )
        ]
    except OSError as exc:
        return [
            Check(
                FAIL,
                "connection",
                f"cannot reach {where} ({type(exc).__name__}): is the server running, does "
                f"{host} resolve here, and may this machine connect out to port {port}?",
            )
        ]
    if common != identity:
        return [
            Check(
                FAIL,
                "connection",
                f"{where} answered as {common!r}, not as the server {identity!r}: another "
                "server of this project's root CA listens there",
            )
        ]
    checks.append(
        Check(
            OK,
            "connection",
            f"TLS to {where}: the server {identity} (certificate from this kit's root "
            "CA) accepted this kit's certificate",
        )
    )
    if not named:
        checks.append(
            Check(
                WARN,
                "TLS names",
                f"the server's certificate does not name {server_name!r} (its subject "
                "alternative names): NVFlare connects anyway (it checks the common "
                "name), a proxy or client that checks host names will not; add it "
                "(flip provision --server-name/--server-ip, then --renew)",
            )
        )
    return checks


def check_connection(kit: Kit, timeout: float = 5.0) -> Iterator[Check]:
    """A site or admin: TLS to the server as configured. A server: its ports answer here with its certificate."""
    host, port, identity, others = _target(kit)
    if not host or not port:
        yield Check(FAIL, "connection", f"{kit.startup} names no server address")
        return
    if kit.role == "server":
        for local_port in [port] + [p for _, p in others]:
            yield from tls_probe(kit, host, local_port, host, identity, timeout)
        return
    yield from tls_probe(kit, host, port, host, identity, timeout)


# -- the settings ---------------------------------------------------------------------------------------------
def _s3_check() -> Check:
    from flip.settings import load_settings
    from flip.storage.client import BOTO_ERRORS, describe_error, make_s3_client

    bucket = load_settings().models_bucket
    try:
        make_s3_client(max_attempts=1, connect_timeout=5, read_timeout=10).head_bucket(Bucket=bucket)
    except BOTO_ERRORS as exc:
        return Check(
            FAIL,
            "S3",
            f"models bucket {bucket!r}: {describe_error(exc)} (check FLIP_MODELS_BUCKET, "
            "AWS_ENDPOINT_URL_S3 and the AWS_* credentials in the server's environment)",
        )
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    return Check(OK, "S3", f"models bucket {bucket!r} at {endpoint} answers with these credentials")


def _hub_check(url: str, timeout: float) -> Check:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout) as raw:
            if parts.scheme == "https":
                ssl.create_default_context().wrap_socket(raw, server_hostname=parts.hostname).close()
    except ssl.SSLError as exc:
        return Check(FAIL, "hub", f"{parts.hostname}:{port}: TLS failed ({exc.reason or type(exc).__name__})")
    except OSError as exc:
        return Check(
            FAIL,
            "hub",
            f"cannot reach {parts.hostname}:{port} ({type(exc).__name__}): may the server connect out to it?",
        )
    return Check(OK, "hub", f"{parts.scheme}://{parts.hostname}:{port} answers (no request sent, the key stays here)")


def check_settings(kit: Kit, timeout: float = 5.0) -> Iterator[Check]:
    """The FLIP_* and AWS_* settings of this environment, as the kit's role needs them."""
    from flip.errors import SettingsError
    from flip.settings import load_settings

    if kit.role == "admin":
        return
    try:
        settings = load_settings()
    except (SettingsError, ValueError) as exc:
        yield Check(FAIL, "settings", str(exc).splitlines()[0])
        return
    yield Check(OK, "settings", f"FLIP_ENV={settings.env}")
    if kit.role == "server":
        if settings.env == "prod":
            missing = [
                n for n, v in (("FLIP_HUB_URL", settings.hub_url), ("FLIP_HUB_API_KEY", settings.hub_api_key)) if not v
            ]
            if missing:
                yield Check(FAIL, "hub", f"FLIP_ENV=prod needs {' and '.join(missing)} in the server's environment")
            else:
                yield _hub_check(settings.hub_url, timeout)
        yield _s3_check()
        return
    held = [k for k in SERVER_SECRETS if os.environ.get(k)]
    if held:
        yield Check(WARN, "secrets", f"this site's environment holds {', '.join(held)}: only the server needs them")
    cohort = Path(settings.local_dir) / "cohorts" / kit.name
    if not cohort.is_dir() or not any(cohort.iterdir()):
        yield Check(
            FAIL,
            "images",
            f"no images in {cohort} (FLIP_LOCAL_DIR={settings.local_dir}): the site has nothing to train on",
        )
    else:
        yield Check(OK, "images", f"{cohort} holds {sum(1 for p in cohort.rglob('*') if p.is_file())} files")


def check_env_file(path: Path) -> Iterator[Check]:
    """The unit's environment file: private (it holds secrets), readable."""
    mode = mode_of(path)
    if mode & 0o077:
        yield Check(FAIL, "env file", f"{path} is open to other users (mode {mode:04o}): chmod 600 {path}")
    else:
        yield Check(OK, "env file", f"{path} is private (mode {mode:04o})")


def diagnose(
    kit_dir: str | Path, env_file: str | Path | None = None, timeout: float = 5.0, warn_days: int = WARN_DAYS
) -> list[Check]:
    """Every check for the kit at ``kit_dir`` (with ``env_file``'s variables applied to this process first)."""
    kit = read_kit(kit_dir)
    checks: list[Check] = []
    if env_file is not None:
        env_path = Path(env_file)
        checks += list(check_env_file(env_path))
        os.environ.update(read_env_file(env_path))
    checks += list(check_kit(kit, warn_days))
    checks += list(check_connection(kit, timeout))
    checks += list(check_settings(kit, timeout))
    return checks


def run_doctor(
    kit_dir: str | Path,
    env_file: str | Path | None = None,
    timeout: float = 5.0,
    wait: float = 0,
    warn_days: int = WARN_DAYS,
) -> int:
    """Print every check, failures first; return 1 if one failed, else 0. ``wait``: retry for this many seconds
    while the connection fails (a service that is starting)."""
    deadline = time.monotonic() + wait
    while True:
        checks = diagnose(kit_dir, env_file, timeout, warn_days)
        if not any(c.level == FAIL for c in checks) or time.monotonic() >= deadline:
            break
        time.sleep(2)
    order = {FAIL: 0, WARN: 1, OK: 2}
    for check in sorted(checks, key=lambda c: order[c.level]):
        print(check)
    return 1 if any(c.level == FAIL for c in checks) else 0
