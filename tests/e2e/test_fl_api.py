"""FLIP's hub drives a real network through the FL API, over HTTP only (issue 18).

A server, two hospitals and an admin provisioned by ``flip provision`` on 127.0.0.1, started with their kits'
``start.sh`` (each hospital with FLIP's dev data: ``DEV_DATAFRAME``/``DEV_IMAGES_DIR``), a real S3 server, and
``flip api serve`` with the admin's kit. The hub's own request sequences, written down as data from FLIP's
``fl_service.py`` (start a training, the status page, stop a training), are replayed unchanged: same methods, paths,
bodies and timeouts; the only addition is the service's key header. A training runs to its end and its model is
verified in S3; a second one is stopped by the hub's stop sequence and ends STOPPED. Then the service and the network
are stopped, and no process of theirs (nor any child of this test) is left.

The hub's trusts are FL kit slot names (``Trust_1``, ``Trust_2``); the service maps them to the provisioned sites
with ``FLIP_API_TRUST_SITES``, and names them back in ``check_client_status``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from flip.cli import main as flip_cli
from flip.demo.data import write_flip_cohorts
from flip.platform.dev import LocalPlatform
from flip.storage.layout import run_prefix
from flip.storage.weed import free_ports
from tests.conftest import REPO, clean_env, presigned_link
from tests.e2e.processes import kill, processes_of, wait_gone
from tests.integration.conftest import run_objects

pytestmark = [pytest.mark.e2e, pytest.mark.s3]

SITES = ("hospital-a", "hospital-b")
TRUSTS = {"Trust_1": "hospital-a", "Trust_2": "hospital-b"}
ADMIN = "admin@flip.org"
BUNDLE_BUCKET = "flip-bundles"
FLIP_APP = REPO / "flip" / "demo" / "flip_app"
HEADER = "X-Internal-Service-Key"
JOB_TIMEOUT = 600
COHORT_QUERY = "SELECT accession_id, label FROM digits WHERE site = 'any';"

# -- the hub's calls, as FLIP's flip-api makes them (fl_service.py; docs: the notes' section 5) -----------------------
#: (method, path, JSON body or None). A string "{name}" stands for a value of the run (kept as its type: a list stays
#: a list); "{name}" inside a longer string is filled in as text. POST always carries Content-Type: application/json,
#: with no body for submit_job (the hub's json=None).
HUB_START_TRAINING = (
    ("GET", "/check_client_status", None),
    (
        "POST",
        "/upload_app/{model_id}",
        {
            "project_id": "{project_id}",
            "cohort_query": "{cohort_query}",
            "trusts": "{trusts}",
            "bundle_urls": "{bundle_urls}",
        },
    ),
    ("POST", "/submit_job/{model_id}", None),
)
HUB_STATUS_PAGE = (("GET", "/check_server_status", None), ("GET", "/check_client_status", None))
HUB_STOP_TRAINING = (
    ("GET", "/check_server_status", None),
    ("GET", "/list_jobs", None),
    ("DELETE", "/abort_job/{job_id}", None),
)
#: the hub's timeouts (seconds): upload 900, abort httpx's default 5, everything else 30
HUB_TIMEOUTS = {"/upload_app/": 900.0, "/abort_job/": 5.0}
HUB_STATUSES = ("PENDING", "RUNNING", "FINISHED", "FAILED", "STOPPED")
OFFLINE = ("no_reply", "DISCONNECTED")


def fill(value, values: dict):
    """``value`` with its ``{name}`` placeholders replaced from ``values``."""
    if isinstance(value, str):
        if value.startswith("{") and value.endswith("}") and value[1:-1] in values:
            return values[value[1:-1]]
        return value.format_map(values)
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    return value


class Api:
    """The FL API as the hub calls it: one request per call, the key header added, errors raised like httpx's
    ``raise_for_status``, the body parsed as JSON (else text)."""

    def __init__(self, url: str, key: str | None):
        self.url, self.key = url, key
        self.calls: list[tuple[str, str, int]] = []

    def request(self, method: str, path: str, body=None, key: str | None = "default", timeout: float | None = None):
        headers = {"Content-Type": "application/json"} if method == "POST" else {}
        key = self.key if key == "default" else key
        if key is not None:
            headers[HEADER] = key
        data = json.dumps(body).encode() if body is not None else None
        timeout = timeout or next((t for p, t in HUB_TIMEOUTS.items() if path.startswith(p)), 30.0)
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                status, text = reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        self.calls.append((method, path, status))
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def replay(self, steps, values: dict) -> list:
        """Each step as the hub sends it; every answer must be 2xx (the hub's raise_for_status)."""
        answers = []
        for method, path, body in steps:
            status, answer = self.request(method, fill(path, values), fill(body, values))
            assert 200 <= status < 300, f"{method} {fill(path, values)}: {status} {answer}"
            answers.append(answer)
        return answers


# -- what the hub requires of the answers (fl_service.py), written as the hub reads them -------------------------------
def hub_clients_available(answer, slots) -> None:
    """``_validate_client_availability``: a non-empty list; every slot listed, none offline."""
    assert isinstance(answer, list) and answer, "Unable to fetch client statuses to validate client availability"
    online = {c["name"] for c in answer if c["status"] not in OFFLINE}
    assert not [s for s in slots if s not in online], f"Clients unavailable: {answer}"


def hub_job_id(answer) -> str:
    assert isinstance(answer, str) and answer, "No backend job id returned or invalid format"
    return answer


def hub_running_job(answer, job_id: str) -> list:
    """The stop sequence's check: a list of {job_id, status} in the five statuses; the RUNNING job that is ours."""
    assert isinstance(answer, list)
    for item in answer:
        assert set(item) == {"job_id", "status"} and item["status"] in HUB_STATUSES, item
    return [item for item in answer if item["status"] == "RUNNING" and item["job_id"] == job_id]


class Network:
    """The provisioned network on 127.0.0.1, its S3, FLIP's dev data per site, and the FL API in front of it."""

    def __init__(self, tmp: Path, weed):
        self.tmp, self.weed = tmp, weed
        fed, admin, self.api_port = free_ports(3)
        out = tmp / "kits"
        assert (
            flip_cli(
                [
                    "provision",
                    "--sites",
                    ",".join(SITES),
                    "--server",
                    "localhost",
                    "--fed-port",
                    str(fed),
                    "--admin-port",
                    str(admin),
                    "--server-storage",
                    str(tmp / "storage"),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        self.kits = out / "workspace" / "flip" / "prod_00"
        self.local_dir = tmp / "flip"
        self.data = write_flip_cohorts(tmp / "data", list(SITES), per_site=60)
        (tmp / "home").mkdir()
        self.env = clean_env("FLIP_", "AWS_", "NVFLARE_", "NVFL_", "DEV_", "LOCAL_DEV")
        self.env.update(
            {
                "HOME": str(tmp / "home"),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH")])),
                "FLIP_ENV": "dev",
                "FLIP_LOCAL_DIR": str(self.local_dir),
            }
        )
        self.key = uuid.uuid4().hex + uuid.uuid4().hex
        self.key_file = tmp / "secrets" / "fl-api.key"
        self.key_file.parent.mkdir(mode=0o700)
        self.key_file.write_text(self.key + "\n")
        os.chmod(self.key_file, 0o600)
        self.bundles = tmp / "bundles"
        self.bundles.mkdir()
        self.api_process: subprocess.Popen | None = None
        self.api_log = tmp / "fl-api.log"

    def start(self) -> None:
        server_env = {**self.env, **self.weed.env}
        self._start_kit(self.kits / "localhost", server_env)
        for site in SITES:
            dataframe, images = self.data[site]
            self._start_kit(
                self.kits / site, {**self.env, "DEV_DATAFRAME": str(dataframe), "DEV_IMAGES_DIR": str(images)}
            )

    def _start_kit(self, kit: Path, env: dict) -> None:
        subprocess.run(
            [str(kit / "startup" / "start.sh")],
            env=env,
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def start_api(self) -> Api:
        env = {
            **{k: v for k, v in self.env.items() if not k.startswith("AWS_")},  # the hub's links need no credential
            "FLIP_API_KEY_FILE": str(self.key_file),
            "FLIP_API_BUNDLE_HOSTS": f"127.0.0.1:{self.weed.s3_port}",  # the hub's S3 (https:// in production)
            "FLIP_API_BUNDLE_ROOT": str(self.bundles),
            "FLIP_API_TRUST_SITES": json.dumps(TRUSTS),
            "FLIP_API_CONNECT_TIMEOUT": "120",
        }
        with open(self.api_log, "wb") as log:
            self.api_process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flip.cli",
                    "api",
                    "serve",
                    "--admin-dir",
                    str(self.kits / ADMIN),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.api_port),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        api = Api(f"http://127.0.0.1:{self.api_port}", self.key)
        deadline = time.monotonic() + 180
        while True:
            assert self.api_process.poll() is None, f"flip api serve exited:\n{self.log()}"
            try:
                if api.request("GET", "/health/", key=None, timeout=5)[0] == 200:
                    return api
            except OSError:
                pass
            assert time.monotonic() < deadline, f"flip api serve did not answer:\n{self.log()}"
            time.sleep(1)

    def log(self) -> str:
        return self.api_log.read_text(errors="replace")[-4000:] if self.api_log.is_file() else ""

    def stop(self) -> list[int]:
        """The FL API (SIGTERM), then the network (``nvflare system shutdown all``); return what is left."""
        if self.api_process is not None and self.api_process.poll() is None:
            self.api_process.send_signal(signal.SIGTERM)
            try:
                self.api_process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        subprocess.run(
            [
                str(Path(sys.executable).with_name("nvflare")),
                "system",
                "shutdown",
                "all",
                "--force",
                "--startup-kit",
                str(self.kits / ADMIN),
            ],
            env=self.env,
            capture_output=True,
            timeout=180,
        )
        return wait_gone(self.tmp, seconds=90)


def _children() -> list[int]:
    """This test process's live children."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[1]) == os.getpid():
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def network(tmp_path_factory, weed):
    tmp = tmp_path_factory.mktemp("fl_api")
    net = Network(tmp, weed)
    try:
        net.start()
        net.api = net.start_api()
        deadline = time.monotonic() + 180  # both hospitals registered: the hub's first check would pass
        while True:
            status, answer = net.api.request("GET", "/check_client_status")
            if status == 200 and {c["name"] for c in answer} == set(TRUSTS):
                break
            assert time.monotonic() < deadline, f"the sites did not join: {status} {answer}\n{net.log()}"
            time.sleep(2)
        yield net
    finally:
        kill(net.stop() if processes_of(tmp) else [])
        kill(processes_of(tmp))


def _hub_bundle(weed, model_id: str, app: Path) -> list[str]:
    """The bundle as FLIP's hub assembles it under <bucket>/<model_id>/ (its job template's files, the researcher's
    files in app/custom/) and sends it: one pre-signed GET link (SigV4) per object."""
    client = weed._client()
    try:
        client.create_bucket(Bucket=BUNDLE_BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    objects = {f"{model_id}/app/custom/{p.name}": p.read_bytes() for p in sorted(app.iterdir()) if p.is_file()}
    objects[f"{model_id}/app/config/config_fed_client.json"] = b'{"format_version": 2, "executors": []}'
    objects[f"{model_id}/app/config/config_fed_server.json"] = b'{"format_version": 2, "workflows": []}'
    objects[f"{model_id}/meta.json"] = json.dumps({"name": model_id, "deploy_map": {"app": ["@ALL"]}}).encode()
    for key, body in objects.items():
        client.put_object(Bucket=BUNDLE_BUCKET, Key=key, Body=body)
    return [presigned_link(weed, BUNDLE_BUCKET, key) for key in objects]


def _app(folder: Path, **config) -> Path:
    """The demo's FLIP app with ``config`` written into its config.json."""
    shutil.copytree(FLIP_APP, folder, ignore=shutil.ignore_patterns("__pycache__"))
    values = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**values, **config}))
    return folder


def _wait_status(api: Api, job_id: str, wanted: tuple[str, ...], seconds: float = JOB_TIMEOUT) -> str:
    deadline = time.monotonic() + seconds
    while True:
        status, jobs = api.request("GET", "/list_jobs")
        assert status == 200, jobs
        mine = [j["status"] for j in jobs if j["job_id"] == job_id]
        if mine and mine[0] in wanted:
            return mine[0]
        assert time.monotonic() < deadline, f"job {job_id} is {mine} after {seconds:.0f} s, not {wanted}"
        time.sleep(2)


def test_the_hubs_training_sequence_runs_a_training_to_a_verified_model(network, weed, tmp_path):
    """The hub's start sequence, its status page while the job runs, and the model verified in S3."""
    api, model_id, project_id = network.api, str(uuid.uuid4()), str(uuid.uuid4())
    app = _app(tmp_path / "researcher_app", GLOBAL_ROUNDS=1, LOCAL_ROUNDS=1)
    values = {
        "model_id": model_id,
        "project_id": project_id,
        "cohort_query": COHORT_QUERY,
        "trusts": list(TRUSTS),
        "bundle_urls": _hub_bundle(weed, model_id, app),
    }
    started = time.monotonic()
    clients, uploaded, job_id = api.replay(HUB_START_TRAINING, values)
    hub_clients_available(clients, list(TRUSTS))
    job_id = hub_job_id(job_id)
    assert uploaded["job_folder"] == model_id and uploaded["sites"] == list(SITES) and uploaded["rounds"] == 1

    server, clients = api.replay(HUB_STATUS_PAGE, values)
    assert server["status"] in ("starting", "started", "stopped") and isinstance(server["start_time"], float)
    assert {c["name"] for c in clients} == set(TRUSTS)
    assert _wait_status(api, job_id, ("FINISHED", "FAILED", "STOPPED")) == "FINISHED", network.log()
    print(f"training through the FL API: {time.monotonic() - started:.1f} s")

    manifest, objects = run_objects(weed, run_prefix(model_id, job_id))  # verified against its manifest
    import torch

    state = torch.load(io.BytesIO(objects["global_model.pt"]), weights_only=True)
    assert state and manifest["job_id"] == job_id and sorted(manifest["sites"]) == list(SITES)
    statuses = [s["status"] for s in LocalPlatform(network.local_dir).read_statuses(model_id)]
    assert statuses == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]

    staged = network.kits / ADMIN / "transfer" / model_id  # the hub's settings are in the job that ran
    meta = json.loads((staged / "meta.json").read_text())
    assert meta["deploy_map"] == {"app": ["server", *SITES]} and meta["mandatory_clients"] == list(SITES)
    assert meta["min_clients"] == 2
    client_config = json.loads((staged / "app" / "config" / "config_fed_client.json").read_text())
    trainer = next(e["executor"] for e in client_config["executors"] if "train" in e["tasks"])
    assert trainer["args"]["project_id"] == project_id and trainer["args"]["query"] == COHORT_QUERY
    assert not (staged / "app" / "custom" / "config_fed_client.json").exists()  # the hub's template is not used
    network.finished_job = job_id
    network.not_logged = [network.key, project_id, COHORT_QUERY]


def test_the_hubs_stop_sequence_ends_a_running_job_stopped(network, tmp_path):
    """A second training (a file:// bundle, an older hub's ``global_rounds``) is stopped by the hub's sequence."""
    api, model_id = network.api, str(uuid.uuid4())
    app = _app(network.bundles / model_id, GLOBAL_ROUNDS=1, LOCAL_ROUNDS=1)
    status, uploaded = api.request(
        "POST",
        f"/upload_app/{model_id}",
        {
            "project_id": "p",
            "cohort_query": COHORT_QUERY,
            "trusts": list(TRUSTS),
            "bundle_urls": [f"file://{app}"],
            "global_rounds": 50,
            "local_rounds": 1,
            "aggregator": "InTimeAccumulateWeightedAggregator",
        },
    )
    assert status == 200 and uploaded["rounds"] == 50, uploaded
    status, job_id = api.request("POST", f"/submit_job/{model_id}")
    assert status == 200, job_id
    _wait_status(api, hub_job_id(job_id), ("RUNNING",), seconds=180)
    deadline = time.monotonic() + 180  # training under way: the platform saw round 1 start
    while "TRAINING_STARTED" not in [s["status"] for s in LocalPlatform(network.local_dir).read_statuses(model_id)]:
        assert time.monotonic() < deadline, "the second training did not start"
        time.sleep(1)

    server, jobs, aborted = api.replay(HUB_STOP_TRAINING, {"job_id": job_id})
    assert server["status"] == "started"
    assert hub_running_job(jobs, job_id) == [{"job_id": job_id, "status": "RUNNING"}]
    assert aborted == {"job_id": job_id, "status": "STOPPED"}
    assert _wait_status(api, job_id, ("FINISHED", "FAILED", "STOPPED"), seconds=180) == "STOPPED"
    statuses = [s["status"] for s in LocalPlatform(network.local_dir).read_statuses(model_id)]
    assert statuses[-1] == "STOPPED"
    assert api.request("DELETE", f"/abort_job/{job_id}") == (200, {"job_id": job_id, "status": "STOPPED"})


def test_refusals_of_the_running_service(network):
    api, model_id = network.api, str(uuid.uuid4())
    assert api.request("GET", "/list_jobs", key=None) == (401, {"detail": f"missing or wrong {HEADER} header"})
    assert api.request("GET", "/list_jobs", key=network.key[:-1] + "x")[0] == 401
    status, reply = api.request("DELETE", f"/abort_job/{uuid.uuid4()}")
    assert status == 404 and "the FL server knows no such job" in reply["detail"]
    status, reply = api.request("POST", f"/submit_job/{model_id}")
    assert (
        status == 404 and reply["detail"] == f"no job folder '{model_id}' is staged: POST /upload_app/{model_id} first"
    )
    app = _app(network.bundles / model_id)
    status, reply = api.request(
        "POST",
        f"/upload_app/{model_id}",
        {"project_id": "p", "cohort_query": "q", "trusts": ["Trust_1", "Trust_3"], "bundle_urls": [f"file://{app}"]},
    )
    assert status == 400 and reply["detail"] == (
        "trust(s) 'Trust_3' not in the network: the sites connected to the FL server are Trust_1 (site hospital-a), "
        "Trust_2 (site hospital-b)"
    )
    (app / "validator.py").unlink()
    status, reply = api.request(
        "POST",
        f"/upload_app/{model_id}",
        {"project_id": "p", "cohort_query": "q", "trusts": ["Trust_1"], "bundle_urls": [f"file://{app}"]},
    )
    assert status == 400 and reply["detail"].startswith("the bundle lacks validator.py: a job of type standard "), reply
    assert not (network.kits / ADMIN / "transfer" / model_id).exists()  # nothing staged
    assert [p.name for p in (network.kits / ADMIN / "transfer").iterdir() if p.name.startswith(".")] == []
    status, reply = api.request("GET", "/check_client_status?targets=Trust_2")
    assert status == 200 and [c["name"] for c in reply] == ["Trust_2"] and reply[0]["status"] not in OFFLINE
    finished = getattr(network, "finished_job", None)
    if finished:  # abort is idempotent: an ended job is left as it ended
        assert api.request("DELETE", f"/abort_job/{finished}") == (200, {"job_id": finished, "status": "FINISHED"})


def test_the_service_and_the_network_stop_leaving_nothing_running(network, weed):
    left = network.stop()
    assert left == [], f"processes left after the FL API and the network stopped: {left}"
    assert network.api_process.returncode == 0, network.log()
    log = network.api_log.read_text(errors="replace")
    assert "Traceback" not in log and "admin session to the FL server open (admin@flip.org)" in log
    for secret in getattr(network, "not_logged", [network.key]):  # the key, the project id, the cohort query
        assert secret not in log
    assert [pid for pid in _children() if pid != weed.pid] == []
