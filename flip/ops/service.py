"""systemd units and their environment files for the server and each hospital site.

``flip provision`` writes, into each server and site kit, ``service/flip-<name>.service`` and
``service/flip-<name>.env``. The unit runs the kit's own watchdog (``startup/sub_start.sh``, the loop NVFlare's
``start.sh`` runs in the background), so the admin console's ``restart`` and ``shutdown`` keep working; systemd
starts it at boot and again if it fails. The environment file holds the secrets (``AWS_*``, the hub key): it is
written 0600 and installed 0600, owned by root (systemd reads it before it drops to the service's user).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

#: where the kits are installed by default (``<root>/<name>``), with flip's environment in ``<root>/venv``
SERVICE_ROOT = "/opt/flip"
SERVICE_USER = "flip"
#: where the installed environment files live (``/etc/flip/<name>.env``)
ENV_DIR = "/etc/flip"
#: the folder of a kit that holds its unit and environment file
SERVICE_DIR = "service"
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def check_service_root(value: str) -> str:
    """An absolute POSIX path without whitespace, quotes or ``..`` (it is written into unit files)."""
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or ".." in PurePosixPath(value).parts
        or not re.fullmatch(r"[A-Za-z0-9_./@+-]+", value)
    ):
        raise ValueError(
            f"service root {value!r} is invalid: an absolute path of letters, digits and . _ - / @ +, "
            "without '..', e.g. /opt/flip"
        )
    return value.rstrip("/") or "/"


def check_service_user(value: str) -> str:
    """A POSIX user name (lower case, at most 32 characters)."""
    if not isinstance(value, str) or not _USER_RE.fullmatch(value):
        raise ValueError(
            f"service user {value!r} is invalid: a user name of lower-case letters, digits, '_' or '-', e.g. flip"
        )
    return value


def unit_name(participant: str) -> str:
    """The unit's name: ``flip-<participant>.service``."""
    return f"flip-{participant}.service"


def env_name(participant: str) -> str:
    """The environment file's name: ``flip-<participant>.env``."""
    return f"flip-{participant}.env"


def unit_text(participant: str, role: str, root: str = SERVICE_ROOT, user: str = SERVICE_USER) -> str:
    """The systemd unit of ``participant`` (``role``: "server" or "site") whose kit is at ``<root>/<participant>``."""
    kit = f"{root}/{participant}"
    what = "the FLIP server" if role == "server" else "the FLIP hospital site"
    return f"""# {what} {participant} (NVFlare), written by `flip provision`. Install it as the README's
# "Running as a service" shows: the kit at {kit}, flip's environment at {root}/venv,
# the environment file at {ENV_DIR}/{env_name(participant)} (0600, owned by root).
# Logs: {kit}/log.txt and error_log.txt (NVFlare rotates them at 20 MB, 10 files kept), each job's
# {kit}/<job id>/log.txt, and the console output in the journal: journalctl -u {unit_name(participant)}
[Unit]
Description=FLIP on NVFlare: {what} {participant}
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={user}
WorkingDirectory={kit}
EnvironmentFile={ENV_DIR}/{env_name(participant)}
Environment=PATH={root}/venv/bin:/usr/local/bin:/usr/bin:/bin
UMask=0077
# NVFlare's own watchdog: restarts the FLARE process if it dies, honours the console's restart and shutdown
ExecStart={kit}/startup/sub_start.sh
Restart=on-failure
RestartSec=10
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
"""


_SERVER_ENV = """# Environment of the FLIP server {name} (systemd EnvironmentFile). Secrets: keep it 0600, owned by root,
# off backups that others read. Only the server holds the hub key and the models bucket's credentials.
FLIP_ENV=prod
# FLIP_HUB_URL=https://hub.example.org
# FLIP_HUB_API_KEY=
FLIP_MODELS_BUCKET=flip-models
# AWS_ACCESS_KEY_ID=
# AWS_SECRET_ACCESS_KEY=
# AWS_DEFAULT_REGION=eu-west-2
# AWS_ENDPOINT_URL_S3=https://s3.example.org   (only for an S3-compatible server that is not AWS)
# FLIP_LOCAL_DIR={root}/{name}-flip   (dev platform only: status.jsonl, metrics.jsonl)
"""

_SITE_ENV = """# Environment of the FLIP hospital site {name} (systemd EnvironmentFile): keep it 0600, owned by root.
# A site holds neither the hub key nor the models bucket's credentials.
FLIP_ENV=prod
# the site's image store: cohorts/{name}/ under it (the images one run fetches go to images/{name}/<job id>/)
FLIP_LOCAL_DIR={root}/{name}-data
"""


def env_text(participant: str, role: str, root: str = SERVICE_ROOT) -> str:
    """The environment file template of ``participant`` (``role``: "server" or "site")."""
    return (_SERVER_ENV if role == "server" else _SITE_ENV).format(name=participant, root=root)
