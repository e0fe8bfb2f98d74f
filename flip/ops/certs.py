"""Certificates of startup kits: whose, valid until when, and what to do before they expire.

NVFlare gives every participant a certificate valid 360 days (never beyond its root CA's); flip provisions a root CA
valid ten years (``flip.provisioning.ROOT_VALID_DAYS``; projects provisioned before keep NVFlare's 360 days). A site
whose certificate has expired can no longer connect; ``flip provision --renew`` issues new ones under the same root.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

from flip.errors import FlipError

#: warn when a certificate expires within this many days
WARN_DAYS = 60
#: the certificate of each kind of kit, in its startup/ folder
KIT_CERTS = ("server.crt", "client.crt")
ROOT_CERT = "rootCA.pem"


@dataclass(frozen=True)
class CertInfo:
    """One certificate: whose (its kit or "root CA"), its file, its common name, when it expires, its SAN."""

    owner: str
    path: Path
    common_name: str
    not_after: datetime.datetime
    names: tuple[str, ...] = ()

    def days_left(self, now: datetime.datetime | None = None) -> int:
        """Whole days until it expires (negative once expired)."""
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now).days

    def line(self, now: datetime.datetime | None = None, warn_days: int = WARN_DAYS) -> tuple[str, bool]:
        """``(text, needs_action)``: one line on its expiry, with what to do when it is near or past."""
        days = self.days_left(now)
        when = f"{self.owner:<28} expires {self.not_after:%Y-%m-%d} ({days} days)"
        if days < 0:
            return f"{when}: EXPIRED, {self._advice()}", True
        if days < warn_days:
            return f"{when}: WARNING, under {warn_days} days: {self._advice()}", True
        return when, False

    def _advice(self) -> str:
        if self.owner == "root CA":
            return (
                "a new root CA means new kits for every participant: provision a new project (flip provision "
                "--out NEW_DIR) and hand out all its kits"
            )
        return "run flip provision --renew --out DIR and give the participant its new startup/ folder"


def read_cert(path: Path, owner: str) -> CertInfo:
    """Read a PEM certificate.

    Raises:
        FlipError: it is missing or not a certificate (named).
    """
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise FlipError(f"{path}: not a readable PEM certificate ({type(exc).__name__})") from exc
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        names = tuple(str(n.value) for n in san)
    except x509.ExtensionNotFound:
        names = ()
    return CertInfo(owner, Path(path), str(common[0].value) if common else "", cert.not_valid_after_utc, names)


def kit_cert(kit: Path) -> CertInfo:
    """The certificate of the kit at ``kit`` (its server.crt or client.crt), owned by the kit's folder name.

    Raises:
        FlipError: the kit has no certificate.
    """
    for name in KIT_CERTS:
        path = Path(kit) / "startup" / name
        if path.is_file():
            return read_cert(path, Path(kit).name)
    raise FlipError(f"{Path(kit) / 'startup'} holds no {' or '.join(KIT_CERTS)}: not a server, site or admin kit")


def prod_certs(prod: Path) -> list[CertInfo]:
    """The root CA and every kit's certificate in a prod_NN folder, root first, then by kit name."""
    kits = sorted(p for p in Path(prod).iterdir() if (p / "startup").is_dir())
    if not kits:
        raise FlipError(f"{prod} holds no startup kits")
    return [read_cert(kits[0] / "startup" / ROOT_CERT, "root CA")] + [kit_cert(k) for k in kits]


def expiry_report(
    certs: list[CertInfo], now: datetime.datetime | None = None, warn_days: int = WARN_DAYS
) -> tuple[list[str], int]:
    """One line per certificate and how many need action (expired, or expiring within ``warn_days``)."""
    lines, count = [], 0
    for cert in certs:
        text, action = cert.line(now, warn_days)
        lines.append(text)
        count += action
    return lines, count
