"""``flip api serve``: check the settings, open the admin session, serve the FL API with uvicorn until stopped."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from flip.checks import check_port
from flip.errors import SettingsError


def serve(
    admin_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    username: str | None = None,
    insecure_loopback: bool = False,
) -> int:
    """Serve the FL API for the FL server the admin kit ``admin_dir`` reaches, until SIGINT or SIGTERM.

    Args:
        admin_dir: an admin's startup kit (``startup/fed_admin.json``, its certificate and key).
        host, port: where to listen.
        username: the admin identity (default ``FLIP_API_USERNAME``, else the kit's).
        insecure_loopback: serve without a key (a loopback ``host`` only).

    Raises:
        SettingsError: a bad setting, no key (see :func:`flip.api.settings.service_config`), not an admin kit.
        FlareError: the FL server cannot be reached with the kit (the short cause).
    """
    import uvicorn

    from flip.api.app import create_app
    from flip.api.flare import Flare
    from flip.api.settings import kit_username, load_api_settings, service_config

    check_port("--port", port)
    admin_dir = Path(admin_dir).expanduser().resolve()
    if not (admin_dir / "startup" / "fed_admin.json").is_file():
        raise SettingsError(f"--admin-dir {admin_dir} is not an admin's startup kit (no startup/fed_admin.json)")
    settings = load_api_settings(username=username)
    config = service_config(settings, host, insecure_loopback)
    user = settings.username or kit_username(admin_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flare = Flare(admin_dir, user, connect_timeout=settings.connect_timeout).connect()
    auth = f"key required in {config.key_header}" if config.key else "NO KEY (--insecure-loopback)"
    print(
        f"FL API for the FL server of {admin_dir.name}'s kit, as {user}, on http://{host}:{port} ({auth})", flush=True
    )
    for stop in (signal.SIGINT, signal.SIGTERM):  # uvicorn handles them while it serves, then re-raises the one it
        signal.signal(stop, _stopped)  # got to the handler before it: ours, so the service ends with 0
    uvicorn.run(create_app(config, flare), host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
    flare.close()
    return 0


def _stopped(signum, frame) -> None:
    """SIGINT or SIGTERM after uvicorn has shut down: nothing more to do."""
