"""Helpers for tests of startup kits: a real mutual-TLS server on 127.0.0.1 with a kit's certificate, a client
handshake with a kit's certificate, and a kit certificate re-issued to expire soon.

The server requires a client certificate from its kit's root CA, as NVFlare's server does, and records the common
name of every client it accepted and every handshake it refused."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID


class TlsServer:
    """Serve TLS with ``kit``'s ``startup/server.crt`` and ``server.key``, trusting only ``startup/rootCA.pem``."""

    def __init__(self, kit: Path, port: int = 0):
        startup = Path(kit) / "startup"
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(cafile=str(startup / "rootCA.pem"))
        self.context.load_cert_chain(str(startup / "server.crt"), str(startup / "server.key"))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> TlsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        socket.create_connection(("127.0.0.1", self.port)).close()  # wake accept()
        self.thread.join(timeout=10)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            conn, _ = self.sock.accept()
            if self._stop:
                conn.close()
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
                    self.accepted.append(peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
            except (ssl.SSLError, OSError) as exc:
                self.refused.append(type(exc).__name__)


def client_handshake(kit: Path, port: int, cert: str = "client.crt", key: str = "client.key") -> str:
    """Connect to ``port`` with ``kit``'s own certificate and root CA (host names not checked, as NVFlare 2.9);
    return the server certificate's common name. Raises ssl.SSLError if either side refuses the other."""
    startup = Path(kit) / "startup"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(startup / "rootCA.pem"))
    context.load_cert_chain(str(startup / cert), str(startup / key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.settimeout(1.0)
            try:
                tls.recv(1)
            except TimeoutError:
                pass
    return peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def reissue(state_dir: Path, kit: Path, days: int) -> None:
    """Give ``kit`` a certificate (same key, same subject, signed by the root CA in ``state_dir/cert.json``) that
    expires in ``days`` days, as a kit provisioned about a year ago would have."""
    state = json.loads((Path(state_dir) / "cert.json").read_text())
    root_key = serialization.load_pem_private_key(state["root_pri_key"].encode(), password=None)
    root = x509.load_pem_x509_certificate(state["root_cert"].encode())
    path = next(p for p in (Path(kit) / "startup" / n for n in ("client.crt", "server.crt")) if p.is_file())
    old = x509.load_pem_x509_certificate(path.read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(root.subject)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=300))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(root_key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
