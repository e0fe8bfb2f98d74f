"""Stand-ins shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

from nvflare.apis.workspace import Workspace


class FakeEngine:
    """Stands in for NVFlare's engine of ``site_name`` (the server or a site): hands out a real Workspace; log
    events go nowhere."""

    def __init__(self, root: Path, site_name: str):
        for folder in ("startup", "local"):
            (root / folder).mkdir(exist_ok=True)
        self.workspace = Workspace(root_dir=str(root), site_name=site_name)

    def get_workspace(self):
        return self.workspace

    def fire_event(self, event_type, fl_ctx):
        pass
