"""The hub's encrypted project id, as FLIP's trust services read it: base64 of a JSON envelope
``{"v": 1, "kid", "iv", "ct"}``, AES-256-GCM over the project id with the associated data ``FLIP|v1|<kid>``.
(FLIP: trust/*/utils/encryption.py; a replica's own implementation.)"""

from __future__ import annotations

import base64
import json
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def new_key() -> str:
    """A fresh AES-256 key, base64 (FLIP's AES_KEY_BASE64)."""
    return base64.b64encode(os.urandom(32)).decode()


def encrypt_project_id(project_id: str, key_b64: str, kid: str = "shared") -> str:
    nonce = os.urandom(12)
    ct = AESGCM(base64.b64decode(key_b64)).encrypt(nonce, project_id.encode(), f"FLIP|v1|{kid}".encode())
    envelope = {"v": 1, "kid": kid, "iv": base64.b64encode(nonce).decode(), "ct": base64.b64encode(ct).decode()}
    return base64.b64encode(json.dumps(envelope).encode()).decode()


def decrypt_project_id(token: str, key_b64: str) -> str:
    """The project id inside ``token``; ValueError (or cryptography's InvalidTag) if it is not one of ours."""
    envelope = json.loads(base64.b64decode(token, validate=True))
    if not isinstance(envelope, dict) or envelope.get("v") != 1:
        raise ValueError("not a v1 envelope")
    kid = envelope["kid"]
    plain = AESGCM(base64.b64decode(key_b64)).decrypt(
        base64.b64decode(envelope["iv"]), base64.b64decode(envelope["ct"]), f"FLIP|v1|{kid}".encode()
    )
    return plain.decode()
