"""Provisioning for hospitals: a project.yml for one server, N sites and an admin, run through ``nvflare provision``.

``FlipSiteBuilder`` (a builder named in project.yml, so ``nvflare provision`` and ``nvflare poc prepare -i`` use
it too) adds what FLIP needs to every startup kit:

- ``flip.`` in the kit's class allow list (``local/resources.json.default``), so FLIP's components load even in a
  job without a custom/ folder;
- at each hospital site, ``local/privacy.json``: a default privacy scope whose task-result filter is
  ``PercentilePrivacy``. NVFlare applies a site's scope filters before the job's own, to every result the site
  sends, whatever the job says: the site, not the job submitter, controls what leaves it;
- at each hospital site, ``allow_log_streaming: false`` in ``local/resources.json.default``: NVFlare's default
  (true) streams every job's error log of the site to the server, and a log may name a patient's file. A site
  opts in with ``allow_log_streaming: true`` on its participant in project.yml (or every site, with
  ``flip provision --allow-log-streaming``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from nvflare.lighter.constants import PropKey
from nvflare.lighter.spec import Builder

from flip.checks import check_bool, check_port
from flip.errors import FlipError
from flip.privacy.percentile import check_gamma, check_percentile

ALLOW_PREFIX = "flip."
PROJECT_FILE = "project.yml"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def site_privacy_policy(percentile: float = 10, gamma: float = 0.01) -> dict[str, Any]:
    """The privacy.json a hospital site enforces on every job: PercentilePrivacy on all task results.

    The filter is marked ``site_policy``: it records so on every update, so that a job's own filter of the same
    kind can say it applies too (or, with ``defer_to_site``, leave the update to it).
    """
    return {
        "scopes": [{
            "name": "default",
            "properties": {"policy": "flip site-enforced PercentilePrivacy"},
            "task_result_filters": [{
                "path": "flip.nvflare.components.PercentilePrivacy",
                "args": {"percentile": check_percentile(percentile), "gamma": check_gamma(gamma),
                         "site_policy": True},
            }],
        }],
        "default_scope": "default",
    }


class FlipSiteBuilder(Builder):
    """Add FLIP's class allow-list entry to every kit, the site privacy policy to every hospital site, and keep
    every site's logs on site unless it opts in.

    Args:
        percentile, gamma: the site-enforced PercentilePrivacy. Defaults 10 / 0.01.
        enforce_privacy: write ``local/privacy.json`` at the sites. Default True.
        allow_log_streaming: let NVFlare stream the sites' job error logs to the server. Default False; a site's
            own ``allow_log_streaming`` property in project.yml (true or false) wins for that site.

    Raises:
        ValueError: a bad argument (named).
    """

    def __init__(self, percentile: float = 10, gamma: float = 0.01, enforce_privacy: bool = True,
                 allow_log_streaming: bool = False):
        self.policy = site_privacy_policy(percentile, gamma)
        self.enforce_privacy = enforce_privacy
        self.allow_log_streaming = check_bool("allow_log_streaming", allow_log_streaming)

    def log_streaming(self, client) -> bool:
        """Whether ``client`` streams its logs to the server: its own project.yml property, else the builder's."""
        own = client.get_prop(PropKey.ALLOW_LOG_STREAMING)
        return self.allow_log_streaming if own is None else check_bool(
            f"{client.name}'s {PropKey.ALLOW_LOG_STREAMING}", own)

    def build(self, project, ctx):
        clients = project.get_clients()
        for participant in [project.get_server(), *clients]:
            local = Path(ctx.get_local_dir(participant))
            resources = local / "resources.json.default"
            if resources.is_file():
                data = json.loads(resources.read_text())
                before = json.dumps(data)
                allow = data.get("class_allow_list")
                if isinstance(allow, list) and ALLOW_PREFIX not in allow:
                    data["class_allow_list"] = allow + [ALLOW_PREFIX]
                if participant in clients:
                    data[PropKey.ALLOW_LOG_STREAMING] = self.log_streaming(participant)
                if json.dumps(data) != before:
                    resources.write_text(json.dumps(data, indent=4))
        if self.enforce_privacy:
            for client in project.get_clients():
                (Path(ctx.get_local_dir(client)) / "privacy.json").write_text(json.dumps(self.policy, indent=4))


def check_site_names(sites: list[str]) -> list[str]:
    for name in sites:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(f"site name {name!r} is invalid: 1-63 letters, digits, '_' or '-'")
    if len(set(sites)) != len(sites) or not sites:
        raise ValueError(f"site names must be distinct and at least one, got {sites!r}")
    return sites


def check_server_name(server: str) -> str:
    """The server's name is the host every site and admin connects to (and its certificate's name): a DNS name."""
    if (not isinstance(server, str) or len(server) > 253
            or not all(_HOST_LABEL_RE.fullmatch(label) for label in server.split("."))):
        raise ValueError(f"server name {server!r} is invalid: the DNS name sites and admins reach the server by "
                         "(labels of letters, digits and '-', separated by '.'), e.g. fl.example.org or localhost")
    return server


def project_config(sites: list[str], name: str = "flip", server: str = "server", admin: str = "admin@flip.org",
                   fed_learn_port: int = 8002, admin_port: int = 8003, percentile: float = 10,
                   gamma: float = 0.01, allow_log_streaming: bool = False) -> dict[str, Any]:
    """The project.yml content: one server, the hospital sites, a project admin, NVFlare's builders + ours.

    ``allow_log_streaming`` (default False) lets every site stream its job error logs to the server (NVFlare's
    default is to stream them); a site may still set its own ``allow_log_streaming`` in the file.
    """
    check_site_names(sites)
    check_bool("allow_log_streaming", allow_log_streaming)
    check_server_name(server)
    for port_name, port in (("fed_learn_port", fed_learn_port), ("admin_port", admin_port)):
        check_port(port_name, port)
    org = "flip"
    participants = [{"name": server, "type": "server", "org": org, "fed_learn_port": fed_learn_port,
                     "admin_port": admin_port}]
    participants += [{"name": site, "type": "client", "org": org} for site in sites]
    participants.append({"name": admin, "type": "admin", "org": org, "role": "project_admin"})
    return {
        "api_version": 3,
        "name": name,
        "description": "FLIP on NVFlare: a server and hospital sites",
        "participants": participants,
        "builders": [
            {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder",
             "args": {"template_file": ["master_template.yml"]}},
            {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
            {"path": "flip.provisioning.FlipSiteBuilder",
             "args": {"percentile": percentile, "gamma": gamma, "allow_log_streaming": allow_log_streaming}},
            {"path": "nvflare.lighter.impl.cert.CertBuilder"},
            {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
        ],
    }


def render_project(config: dict[str, Any]) -> str:
    """project.yml text (JSON is valid YAML; a header says how it was made)."""
    return "# Written by `flip provision`; JSON is valid YAML.\n" + json.dumps(config, indent=2) + "\n"


def _nvflare(*args: str, cwd: Path) -> None:
    command = [str(Path(sys.executable).with_name("nvflare")), *args]
    result = subprocess.run(command, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise FlipError(f"nvflare {args[0]} failed (exit {result.returncode}): {' | '.join(tail)}")


def latest_prod(out: Path, name: str) -> Path:
    prods = sorted((out / "workspace" / name).glob("prod_*"))
    if not prods:
        raise FlipError(f"no startup kits under {out / 'workspace' / name}")
    return prods[-1]


def provision(sites: list[str], out: str | Path, **options: Any) -> Path:
    """Write ``out/project.yml`` and provision every startup kit; return the folder holding them (prod_NN)."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = project_config(sites, **options)
    (out / PROJECT_FILE).write_text(render_project(config))
    _nvflare("provision", "-p", PROJECT_FILE, "-w", "workspace", "--force", cwd=out)
    return latest_prod(out, config["name"])


def add_site(name: str, out: str | Path) -> Path:
    """Add a hospital site to a provisioned project, keeping its root CA and every existing certificate.

    The new kit is in the returned prod_NN folder; only that site's kit needs to be sent to the new hospital.
    """
    out = Path(out).resolve()
    check_site_names([name])
    project = out / PROJECT_FILE
    if not project.is_file():
        raise FlipError(f"{project} not found: provision the project first (flip provision --sites ...)")
    config = json.loads("\n".join(line for line in project.read_text().splitlines() if not line.startswith("#")))
    if any(p["name"] == name for p in config["participants"]):
        raise ValueError(f"site {name!r} is already in {project}")
    client = out / f"add_{name}.yml"
    client.write_text(json.dumps({"name": name, "org": "flip"}) + "\n")
    _nvflare("provision", "-p", PROJECT_FILE, "-w", "workspace", "--add_client", client.name, "--force", cwd=out)
    client.unlink()
    admin_index = next(i for i, p in enumerate(config["participants"]) if p["type"] == "admin")
    config["participants"].insert(admin_index, {"name": name, "type": "client", "org": "flip"})
    project.write_text(render_project(config))  # later provisioning keeps the new site
    return latest_prod(out, config["name"])
