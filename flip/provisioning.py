"""Provisioning for hospitals: a project.yml for one server, N sites and an admin, run through ``nvflare provision``.

``FlipSiteBuilder`` (a builder named in project.yml, so ``nvflare provision`` and ``nvflare poc prepare -i`` use
it too) adds what FLIP needs to every startup kit:

- ``flip.`` in the kit's class allow list (``local/resources.json.default``), so FLIP's components load even in a
  job without a custom/ folder;
- at each hospital site, ``local/privacy.json``: a default privacy scope whose task-result filter is
  ``PercentilePrivacy``. NVFlare applies a site's scope filters before the job's own, to every result the site
  sends, whatever the job says: the site, not the job submitter, controls what leaves it;
- with ``differential_privacy`` (a dict of SitePrivacyPolicy's arguments, e.g. ``{"target_epsilon": 8}``), at each
  hospital site the ``SitePrivacyPolicy`` component in the same ``local/privacy.json`` (id ``flip_site_privacy``):
  record-level DP-SGD (or client-level DP) that every job must follow, and its ledger under ``local/``;
- at each hospital site, ``allow_log_streaming: false`` in ``local/resources.json.default``: NVFlare's default
  (true) streams every job's error log of the site to the server, and a log may name a patient's file. A site
  opts in with ``allow_log_streaming: true`` on its participant in project.yml (or every site, with
  ``flip provision --allow-log-streaming``);
- at the server and each site, ``service/flip-<name>.service`` and ``service/flip-<name>.env``: a systemd unit and
  its environment file (flip.ops.service);
- at the server, ``disabled_clients.json`` naming every removed site (NVFlare's server refuses their registration
  and heartbeats), and with ``server_storage`` a ``local/resources.json`` keeping jobs and snapshots there.

Secrets at rest: the provisioning state (``workspace/<project>/state/cert.json``: the root CA's private key and every
participant's) is kept 0600 in a 0700 folder, every private key of a kit 0600 in a 0700 ``startup/`` folder; a
state folder others can access is refused before anything runs.

Certificate lifecycle: :func:`renew` issues new certificates under the same root CA, :func:`remove_site` takes a
site out (NVFlare's disabled-clients list; the certificate itself is not revoked) and :func:`check_kits` lists every
kit's expiry date (flip.ops.certs).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from nvflare.lighter.constants import CtxKey, PropKey
from nvflare.lighter.spec import Builder
from nvflare.lighter.utils import update_storage_locations

from flip.checks import check_bool, check_gamma, check_percentile, check_port
from flip.constants import ComponentId
from flip.errors import FlipError
from flip.files import write_private
from flip.ops import service
from flip.ops.permissions import PRIVATE_DIR, PRIVATE_FILE, check_private, make_private, private_dir

ALLOW_PREFIX = "flip."
PROJECT_FILE = "project.yml"
ORG = "flip"
FLIP_BUILDER = "flip.provisioning.FlipSiteBuilder"
SITE_PRIVACY_PATH = "flip.nvflare.components.SitePrivacyPolicy"
#: a site's own DP policy in project.yml (SitePrivacyPolicy's arguments), over the builder's
DP_PROP = "differential_privacy"
CERT_BUILDER = "nvflare.lighter.impl.cert.CertBuilder"
#: the root CA of a new project is valid ten years; each participant's certificate NVFlare's 360 days (--renew)
ROOT_VALID_DAYS = 3650
#: the file in the server's workspace NVFlare reads at start: the sites it refuses (``disable_client``)
DISABLED_CLIENTS_FILE = "disabled_clients.json"
#: the provisioning state's file: the root CA's certificate and private key, and every participant's
CERT_STATE_FILE = "cert.json"
STATE_WHAT = (
    "it holds the root CA's private key and every participant's (flip provision --add-site, --renew and "
    "--remove-site need it): only its owner may read it, and it belongs offline"
)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def dp_policy_component(differential_privacy: dict[str, Any]) -> dict[str, Any]:
    """The ``components`` entry of privacy.json declaring a site's DP policy (SitePrivacyPolicy, checked now).

    Raises:
        ValueError: an argument SitePrivacyPolicy refuses (named), or one it does not take.
    """
    from flip.nvflare.components.site_privacy_policy import SitePrivacyPolicy

    if not isinstance(differential_privacy, dict):  # a project.yml value: the CLI reports ValueErrors
        raise ValueError(  # noqa: TRY004
            f"differential_privacy must be a dict of SitePrivacyPolicy's arguments, got {differential_privacy!r}"
        )
    try:
        SitePrivacyPolicy(**differential_privacy)
    except TypeError as exc:
        raise ValueError(f"differential_privacy: {exc}") from exc
    return {"id": ComponentId.SITE_PRIVACY, "path": SITE_PRIVACY_PATH, "args": dict(differential_privacy)}


def site_privacy_policy(
    percentile: float = 10,
    gamma: float = 0.01,
    differential_privacy: dict[str, Any] | None = None,
    result_filter: bool = True,
) -> dict[str, Any]:
    """The privacy.json a hospital site enforces on every job: PercentilePrivacy on all task results, and with
    ``differential_privacy`` its DP policy (SitePrivacyPolicy's arguments, e.g. ``{"target_epsilon": 8}``).

    The filter is marked ``site_policy``: it records so on every update, so that a job's own filter of the same
    kind can say it applies too (or, with ``defer_to_site``, leave the update to it). ``result_filter=False``
    leaves the scope without a filter (the simulator: every participant, the server too, reads one privacy.json,
    and the server would apply a scope's filter to the results it receives).
    """
    scope: dict[str, Any] = {
        "name": "default",
        "properties": {"policy": "flip site-enforced PercentilePrivacy" if result_filter else "flip site policy"},
    }
    if result_filter:
        scope["task_result_filters"] = [
            {
                "path": "flip.nvflare.components.PercentilePrivacy",
                "args": {"percentile": check_percentile(percentile), "gamma": check_gamma(gamma), "site_policy": True},
            }
        ]
    policy: dict[str, Any] = {"scopes": [scope], "default_scope": "default"}
    if differential_privacy is not None:
        policy["components"] = [dp_policy_component(differential_privacy)]
    return policy


class FlipSiteBuilder(Builder):
    """Add FLIP's class allow-list entry to every kit, the site privacy policy to every hospital site, keep every
    site's logs on site unless it opts in, and write the service units, the removed sites and the server's storage.

    Args:
        percentile, gamma: the site-enforced PercentilePrivacy. Defaults 10 / 0.01.
        enforce_privacy: write ``local/privacy.json`` at the sites. Default True.
        differential_privacy: SitePrivacyPolicy's arguments for every site (e.g. ``{"target_epsilon": 8,
            "total_epsilon": 16}``), or None (default): no DP policy. A site's own ``differential_privacy``
            property in project.yml wins for that site.
        allow_log_streaming: let NVFlare stream the sites' job error logs to the server. Default False; a site's
            own ``allow_log_streaming`` property in project.yml (true or false) wins for that site.
        removed_sites: sites taken out of the project: the server kit's ``disabled_clients.json`` names them and
            NVFlare's server refuses them. Default none.
        server_storage: an absolute folder where the server keeps submitted jobs and snapshots (its
            ``local/resources.json``); default None: NVFlare's /tmp/nvflare, lost at reboot.
        service_root, service_user: where the kits are installed (``<root>/<name>``, flip's environment in
            ``<root>/venv``) and the user the services run as, for the systemd units. Defaults /opt/flip, flip.

    Raises:
        ValueError: a bad argument (named).
    """

    def __init__(
        self,
        percentile: float = 10,
        gamma: float = 0.01,
        enforce_privacy: bool = True,
        allow_log_streaming: bool = False,
        removed_sites: list[str] | None = None,
        server_storage: str | None = None,
        service_root: str = service.SERVICE_ROOT,
        service_user: str = service.SERVICE_USER,
        differential_privacy: dict[str, Any] | None = None,
    ):
        self.percentile, self.gamma = percentile, gamma
        self.differential_privacy = differential_privacy
        self.policy = site_privacy_policy(percentile, gamma, differential_privacy)
        self.enforce_privacy = enforce_privacy
        self.allow_log_streaming = check_bool("allow_log_streaming", allow_log_streaming)
        self.removed_sites = check_site_names(list(removed_sites)) if removed_sites else []
        self.server_storage = check_storage(server_storage) if server_storage is not None else None
        self.service_root = service.check_service_root(service_root)
        self.service_user = service.check_service_user(service_user)

    def log_streaming(self, client) -> bool:
        """Whether ``client`` streams its logs to the server: its own project.yml property, else the builder's."""
        own = client.get_prop(PropKey.ALLOW_LOG_STREAMING)
        return (
            self.allow_log_streaming
            if own is None
            else check_bool(f"{client.name}'s {PropKey.ALLOW_LOG_STREAMING}", own)
        )

    def build(self, project, ctx):
        clients = project.get_clients()
        server = project.get_server()
        for participant in [server, *clients]:
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
            for client in clients:
                own = client.get_prop(DP_PROP)
                policy = self.policy if own is None else site_privacy_policy(self.percentile, self.gamma, own)
                (Path(ctx.get_local_dir(client)) / "privacy.json").write_text(json.dumps(policy, indent=4))
        if self.server_storage:
            update_storage_locations(local_dir=ctx.get_local_dir(server), workspace=self.server_storage)
        if self.removed_sites:
            (Path(ctx.get_ws_dir(server)) / DISABLED_CLIENTS_FILE).write_text(
                json.dumps({"disabled_clients": sorted(self.removed_sites)}, indent=2) + "\n"
            )
        for participant, role in [(server, "server")] + [(c, "site") for c in clients]:
            folder = Path(ctx.get_ws_dir(participant)) / service.SERVICE_DIR
            folder.mkdir(exist_ok=True)
            (folder / service.unit_name(participant.name)).write_text(
                service.unit_text(participant.name, role, self.service_root, self.service_user)
            )
            write_private(
                folder / service.env_name(participant.name), service.env_text(participant.name, role, self.service_root)
            )


def check_site_names(sites: list[str]) -> list[str]:
    for name in sites:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(f"site name {name!r} is invalid: 1-63 letters, digits, '_' or '-'")
    if len(set(sites)) != len(sites) or not sites:
        raise ValueError(f"site names must be distinct and at least one, got {sites!r}")
    return sites


def check_server_name(server: str) -> str:
    """The server's name is the host every site and admin connects to (and its certificate's name): a DNS name."""
    if (
        not isinstance(server, str)
        or len(server) > 253
        or not all(_HOST_LABEL_RE.fullmatch(label) for label in server.split("."))
    ):
        raise ValueError(
            f"server name {server!r} is invalid: the DNS name sites and admins reach the server by "
            "(labels of letters, digits and '-', separated by '.'), e.g. fl.example.org or localhost"
        )
    return server


def check_server_ip(value: str) -> str:
    """An IPv4 address the server is reached at (NVFlare 2.9's project file takes no IPv6 host)."""
    try:
        address = ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        address = None
    if not isinstance(address, ipaddress.IPv4Address) or str(address) != value:
        raise ValueError(
            f"server IP {value!r} is invalid: an IPv4 address such as 203.0.113.7 (NVFlare 2.9 takes "
            "no IPv6 host names)"
        )
    return value


def server_host_names(server: str, ips: list[str] = (), names: list[str] = ()) -> list[str]:
    """The other names and IPs of the server, for its certificate (SAN), checked, in order, without duplicates."""
    hosts = [check_server_name(n) for n in names] + [check_server_ip(ip) for ip in ips]
    return [h for i, h in enumerate(hosts) if h != server and h not in hosts[:i]]


def check_storage(value: str) -> str:
    """The server's storage folder: an absolute path (the server runs from any working folder)."""
    if not isinstance(value, str) or not value.startswith("/") or "\n" in value or ".." in Path(value).parts:
        raise ValueError(
            f"server storage {value!r} is invalid: an absolute folder path without '..', e.g. /var/lib/flip/server"
        )
    return value.rstrip("/") or "/"


def project_config(
    sites: list[str],
    name: str = "flip",
    server: str = "server",
    admin: str = "admin@flip.org",
    fed_learn_port: int = 8002,
    admin_port: int = 8003,
    percentile: float = 10,
    gamma: float = 0.01,
    allow_log_streaming: bool = False,
    server_ips: list[str] = (),
    server_names: list[str] = (),
    server_storage: str | None = None,
    service_root: str = service.SERVICE_ROOT,
    service_user: str = service.SERVICE_USER,
) -> dict[str, Any]:
    """The project.yml content: one server, the hospital sites, a project admin, NVFlare's builders + ours.

    ``allow_log_streaming`` (default False) lets every site stream its job error logs to the server (NVFlare's
    default is to stream them); a site may still set its own ``allow_log_streaming`` in the file. ``server_ips``
    and ``server_names`` are the server's other addresses: with ``server`` they make its certificate's subject
    alternative names (a site or admin may connect by any of them). The root CA is valid ``ROOT_VALID_DAYS``.
    """
    check_site_names(sites)
    check_bool("allow_log_streaming", allow_log_streaming)
    check_server_name(server)
    hosts = server_host_names(server, list(server_ips), list(server_names))
    for port_name, port in (("fed_learn_port", fed_learn_port), ("admin_port", admin_port)):
        check_port(port_name, port)
    flip_args: dict[str, Any] = {"percentile": percentile, "gamma": gamma, "allow_log_streaming": allow_log_streaming}
    if server_storage is not None:
        flip_args["server_storage"] = check_storage(server_storage)
    if service_root != service.SERVICE_ROOT:
        flip_args["service_root"] = service.check_service_root(service_root)
    if service_user != service.SERVICE_USER:
        flip_args["service_user"] = service.check_service_user(service_user)
    server_def: dict[str, Any] = {
        "name": server,
        "type": "server",
        "org": ORG,
        "fed_learn_port": fed_learn_port,
        "admin_port": admin_port,
    }
    if hosts:
        server_def[PropKey.HOST_NAMES] = hosts
    participants = [server_def]
    participants += [{"name": site, "type": "client", "org": ORG} for site in sites]
    participants.append({"name": admin, "type": "admin", "org": ORG, "role": "project_admin"})
    return {
        "api_version": 3,
        "name": name,
        "description": "FLIP on NVFlare: a server and hospital sites",
        "participants": participants,
        "builders": [
            {
                "path": "nvflare.lighter.impl.workspace.WorkspaceBuilder",
                "args": {"template_file": ["master_template.yml"]},
            },
            {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
            {"path": FLIP_BUILDER, "args": flip_args},
            {"path": CERT_BUILDER, "args": {"root_valid_days": ROOT_VALID_DAYS}},
            {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
        ],
    }


def render_project(config: dict[str, Any]) -> str:
    """project.yml text (JSON is valid YAML; a header says how it was made)."""
    return "# Written by `flip provision`; JSON is valid YAML.\n" + json.dumps(config, indent=2) + "\n"


def load_project(out: str | Path) -> dict[str, Any]:
    """The project.yml of a provisioned ``out`` folder (JSON or YAML).

    Raises:
        FlipError: there is none, or it is not a project file.
    """
    project = Path(out) / PROJECT_FILE
    if not project.is_file():
        raise FlipError(f"{project} not found: provision the project first (flip provision --sites ...)")
    try:
        config = yaml.safe_load(project.read_text())
    except yaml.YAMLError as exc:
        raise FlipError(f"{project} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("participants"), list) or not config.get("name"):
        raise FlipError(f"{project} is not a project file (no name or participants)")
    return config


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


def state_dir(out: str | Path, name: str) -> Path:
    """The provisioning state folder of project ``name`` under ``out``."""
    return Path(out) / "workspace" / name / "state"


def protect(out: Path, name: str) -> list[Path]:
    """Make the provisioning state private (0700 folder, 0600 files) and every kit's private keys 0600 in a 0700
    ``startup/`` folder; return the paths made private."""
    state = state_dir(out, name)
    make_private(state)
    done = [state]
    for prod in sorted((out / "workspace" / name).glob("prod_*")):
        for startup in sorted(prod.glob("*/startup")):
            startup.chmod(PRIVATE_DIR)
            done.append(startup)
            for key in sorted(startup.glob("*.key")):
                key.chmod(PRIVATE_FILE)
                done.append(key)
    return done


def _provision(out: Path, name: str, *extra: str) -> Path:
    """Run ``nvflare provision`` on ``out/project.yml`` with the state private before and after; return prod_NN."""
    private_dir(state_dir(out, name))  # created 0700 before NVFlare writes the keys into it
    _nvflare("provision", "-p", PROJECT_FILE, "-w", "workspace", *extra, "--force", cwd=out)
    protect(out, name)
    return latest_prod(out, name)


def provision(sites: list[str], out: str | Path, **options: Any) -> Path:
    """Write ``out/project.yml`` and provision every startup kit; return the folder holding them (prod_NN).

    Raises:
        FlipError: the project's state folder is open to other users (named), or nvflare provision failed.
        ValueError: a bad option (named).
    """
    out = Path(out).resolve()
    config = project_config(sites, **options)
    check_private(state_dir(out, config["name"]), STATE_WHAT)
    out.mkdir(parents=True, exist_ok=True)
    (out / PROJECT_FILE).write_text(render_project(config))
    return _provision(out, config["name"])


def _flip_builder_args(config: dict[str, Any], project: Path) -> dict[str, Any]:
    for builder in config.get("builders") or []:
        if isinstance(builder, dict) and builder.get("path") == FLIP_BUILDER:
            return builder.setdefault("args", {})
    raise FlipError(f"{project} has no {FLIP_BUILDER} builder: it was not written by flip provision")


def _clients(config: dict[str, Any]) -> list[str]:
    return [p["name"] for p in config["participants"] if p.get("type") == "client"]


def _existing(out: str | Path) -> tuple[Path, dict[str, Any]]:
    """``out`` resolved and its project, with its state checked private."""
    out = Path(out).resolve()
    config = load_project(out)
    check_private(state_dir(out, config["name"]), STATE_WHAT)
    return out, config


def add_site(name: str, out: str | Path) -> Path:
    """Add a hospital site to a provisioned project, keeping its root CA and every existing certificate.

    The new kit is in the returned prod_NN folder; only that site's kit needs to be sent to the new hospital.

    Raises:
        ValueError: a bad name, one already in the project, or one removed from it.
        FlipError: no project at ``out``, its state is open to other users, or nvflare provision failed.
    """
    check_site_names([name])
    out, config = _existing(out)
    project = out / PROJECT_FILE
    if any(p["name"] == name for p in config["participants"]):
        raise ValueError(f"site {name!r} is already in {project}")
    if name in _flip_builder_args(config, project).get("removed_sites", []):
        raise ValueError(
            f"site {name!r} was removed from {project} (the server refuses that name): give the hospital a new name"
        )
    client = out / f"add_{name}.yml"
    client.write_text(json.dumps({"name": name, "org": ORG}) + "\n")
    try:
        prod = _provision(out, config["name"], "--add_client", client.name)
    finally:
        client.unlink(missing_ok=True)
    admin_index = next(i for i, p in enumerate(config["participants"]) if p["type"] == "admin")
    config["participants"].insert(admin_index, {"name": name, "type": "client", "org": ORG})
    project.write_text(render_project(config))  # later provisioning keeps the new site
    return prod


def _state(out: Path, name: str) -> tuple[Path, dict[str, Any]]:
    path = state_dir(out, name) / CERT_STATE_FILE
    if not path.is_file():
        raise FlipError(
            f"{path} not found: the project's certificates cannot be renewed or changed without its "
            "provisioning state (the root CA's key)"
        )
    return path, json.loads(path.read_text())


def renew(out: str | Path) -> Path:
    """Issue every participant a new key and certificate under the same root CA; return the new prod_NN.

    Old and new certificates are both valid until the old ones expire (one root signs both), so the server and
    the sites can swap to their new kits one at a time.

    Raises:
        FlipError: no project or state at ``out``, its state is open to other users, or nvflare provision failed
            (e.g. the root CA itself has expired: then only a new project, new kits for everyone, helps).
    """
    out, config = _existing(out)
    path, state = _state(out, config["name"])
    write_private(path, json.dumps({k: state[k] for k in (CtxKey.ROOT_CERT, CtxKey.ROOT_PRI_KEY) if k in state}))
    return _provision(out, config["name"])


def remove_site(name: str, out: str | Path) -> Path:
    """Take hospital site ``name`` out of the project; return the new prod_NN (its server kit refuses the site).

    The site leaves project.yml (later provisioning issues it nothing), its key leaves the provisioning state, and
    the FlipSiteBuilder's ``removed_sites`` gets it: the server kit's ``disabled_clients.json`` lists it, which
    NVFlare's server reads at start and then refuses the site's registration and heartbeats. A running server
    learns it from ``nvflare system disable-client NAME`` (which writes the same file in its workspace). Its
    certificate is not revoked (NVFlare has no revocation list): it stays valid until it expires.

    Raises:
        ValueError: ``name`` is not a site of the project, or is its last.
        FlipError: no project at ``out``, its state is open to other users, or nvflare provision failed.
    """
    check_site_names([name])
    out, config = _existing(out)
    project = out / PROJECT_FILE
    sites = _clients(config)
    if name not in sites:
        raise ValueError(f"{name!r} is not a site of {project}: its sites are {sites}")
    if sites == [name]:
        raise ValueError(f"{name!r} is the last site of {project}: a project keeps at least one")
    args = _flip_builder_args(config, project)
    args["removed_sites"] = sorted(set(args.get("removed_sites", [])) | {name})
    config["participants"] = [p for p in config["participants"] if p["name"] != name]
    path, state = _state(out, config["name"])
    state.pop(name, None)
    write_private(path, json.dumps(state))
    project.write_text(render_project(config))
    return _provision(out, config["name"])


def check_kits(out: str | Path) -> list:
    """The root CA's and every kit's certificate of the latest prod_NN of ``out`` (flip.ops.certs.CertInfo).

    Raises:
        FlipError: no project or no kits at ``out``.
    """
    from flip.ops.certs import prod_certs

    out = Path(out).resolve()
    return prod_certs(latest_prod(out, load_project(out)["name"]))


def previous_cert(out: str | Path, participant: str):
    """The newest certificate a kit of ``participant`` was given under ``out`` (None if none)."""
    from flip.ops.certs import kit_cert

    out = Path(out).resolve()
    for prod in sorted((out / "workspace").glob("*/prod_*"), reverse=True):
        if (prod / participant / "startup").is_dir():
            return kit_cert(prod / participant)
    return None
