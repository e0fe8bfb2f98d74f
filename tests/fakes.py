"""Stand-ins for what only a running NVFlare system has, shared by every test that drives flip's components without
the simulator (one place: no copies elsewhere).

- ``FakeEngine``: a site's or the server's engine with a real Workspace; events go nowhere.
- ``ServerEngine``: the server's engine of one run: components by id, the sites, new contexts of the run
  (NVFlare's FLContextManager), events delivered to every component with NVFlare's own dispatcher.
- ``Communicator``: the server's task communicator, in process: each site answers a task at once.
- ``Persistor``: NVFlare's abstract model persistor holding a small model in memory.
- ``Server``: one run's server components (ServerEventHandler, ValidationJsonGenerator, PersistToS3AndCleanup) on a
  ServerEngine; ``Server.run`` runs a job's workflows through NVFlare's own ServerRunner loop.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext, FLContextManager
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.apis.utils.event import fire_event_to_components
from nvflare.apis.wf_comm_spec import WFCommSpec
from nvflare.apis.workspace import Workspace
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.fuel.utils.component_builder import ComponentBuilder

from flip.constants import ComponentId, FlipMeta, FlipTask, RunFile
from flip.nvflare.components import PersistToS3AndCleanup, ServerEventHandler, ValidationJsonGenerator
from flip.platform.dev import LocalPlatform

SITES = ("site-1", "site-2")
JOB_ID = "job-1"


class FakeEngine:
    """Stands in for NVFlare's engine of ``site_name`` (the server or a site): hands out a real Workspace; log
    events go nowhere."""

    def __init__(self, root: Path, site_name: str):
        for folder in ("startup", "local"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.workspace = Workspace(root_dir=str(root), site_name=site_name)

    def get_workspace(self):
        return self.workspace

    def fire_event(self, event_type, fl_ctx):
        pass


class ServerEngine(FakeEngine):
    """The server's engine of run ``job_id``: a real Workspace at ``root``, the job's components by id, the sites,
    new contexts of the run (NVFlare's FLContextManager, with ``stickers`` in every context), and every event
    delivered to every component and then to ``handlers`` with NVFlare's own dispatcher (like the server, it logs
    and swallows an exception a handler raises). ``fired`` lists the events in order."""

    def __init__(
        self,
        root: Path,
        components: dict | None = None,
        sites=SITES,
        job_id: str = JOB_ID,
        stickers: dict | None = None,
    ):
        super().__init__(root, "server")
        self.components = dict(components or {})
        self.handlers: list = []
        self.clients = [Client(s, None) for s in sites]
        self.fired: list[str] = []
        self.manager = FLContextManager(engine=self, identity_name="server", job_id=job_id, private_stickers=stickers)

    def new_context(self) -> FLContext:
        return self.manager.new_context()

    def get_component(self, component_id):
        return self.components.get(component_id)

    def get_clients(self):
        return list(self.clients)

    def persist_components(self, fl_ctx, completed):
        pass

    def register_aux_message_handler(self, topic, message_handle_func):
        pass

    def fire_event(self, event_type, fl_ctx):
        self.fired.append(event_type)
        fire_event_to_components(event_type, [*self.components.values(), *self.handlers], fl_ctx)


def update(site: str, round_num: int, meta: dict | None = None) -> Shareable:
    """A site's train result for the two-entry model of ``Persistor``: a WEIGHT_DIFF of 0.5 on 10 samples."""
    return DXO(
        DataKind.WEIGHT_DIFF, data={"w": np.full(2, 0.5, np.float32)}, meta={FlipMeta.NUM_SAMPLES: 10, **(meta or {})}
    ).to_shareable()


class Communicator(WFCommSpec):
    """The server's task communicator, in process: for each site (unless the run was aborted), call the task's
    before-sent callback, then hand the site's answer to the result callback in a new context of the run with the
    site as peer (as WFCommServer does, keyword arguments included).

    A ``train`` task is answered by ``reply(site, round)``; another task by ``answers[task name](site, task data)``
    if given, else with an empty OK result. ``sent`` records each task sent: site, task name, the round the data
    carried before the callback, and the headers after it.
    """

    def __init__(
        self,
        engine: ServerEngine,
        reply: Callable[[str, int], Shareable] = update,
        answers: dict[str, Callable[[str, Shareable], Shareable]] | None = None,
    ):
        self.engine = engine
        self.reply = reply
        self.answers = answers or {}
        self.sent: list[dict] = []

    def broadcast_and_wait(
        self, task, fl_ctx, targets=None, min_responses=1, wait_time_after_min_received=0, abort_signal=None
    ):
        for client in self.engine.clients:
            if abort_signal is not None and abort_signal.triggered:
                return
            client_task = ClientTask(client, task)
            task.client_tasks.append(client_task)
            round_before = task.data.get_header(AppConstants.CURRENT_ROUND)
            if task.before_task_sent_cb is not None:
                task.before_task_sent_cb(client_task=client_task, fl_ctx=fl_ctx)
            self.sent.append(
                {
                    "site": client.name,
                    "task": task.name,
                    "round_before_hook": round_before,
                    "headers": dict(task.data.get(ReservedHeaderKey.HEADERS) or {}),
                }
            )
            if task.name in self.answers:
                result = self.answers[task.name](client.name, task.data)
            elif task.name == FlipTask.TRAIN:
                result = self.reply(client.name, task.data.get_header(AppConstants.CURRENT_ROUND))
            else:
                result = Shareable()
            result.set_cookie_jar(task.data.get_cookie_jar())  # the site echoes the cookies
            client_task.result = result
            submission = self.engine.new_context()
            peer = FLContext()
            peer.set_prop(ReservedKey.IDENTITY_NAME, client.name, private=False, sticky=False)
            submission.set_peer_context(peer)
            if task.result_received_cb is not None:
                task.result_received_cb(client_task=client_task, fl_ctx=submission)

    def get_num_standing_tasks(self) -> int:
        return 0

    def cancel_all_tasks(self, completion_status=None, fl_ctx=None):
        pass

    def initialize_run(self, fl_ctx):
        pass

    def finalize_run(self, fl_ctx):
        pass


class Persistor(ModelPersistor):
    """NVFlare's abstract model persistor, holding a two-entry model in memory; records the rounds it saved."""

    def __init__(self):
        super().__init__()
        self.saved_rounds: list[int] = []

    def load_model(self, fl_ctx):
        return make_model_learnable({"w": np.zeros(2, np.float32)}, {})

    def save_model(self, model_learnable, fl_ctx):
        self.saved_rounds.append(fl_ctx.get_prop(AppConstants.CURRENT_ROUND))


def diff_of(data: Shareable, value: float = 0.001) -> dict[str, np.ndarray]:
    """A weight difference of ``value`` for every floating-point entry of the model a train task carries."""
    weights = from_shareable(data).data
    return {k: np.full_like(np.asarray(v), value) for k, v in weights.items() if np.asarray(v).dtype.kind == "f"}


class _ComponentBuilder(ComponentBuilder):
    """NVFlare's component builder for configs that name every class by its full path."""

    def get_module_scanner(self):
        return None


def good_update(site: str, data: Shareable, samples: int = 100) -> Shareable:
    """What a well-behaved site answers to a train task: a small weight difference (``diff_of``) and its metrics."""
    result = DXO(DataKind.WEIGHT_DIFF, data=diff_of(data), meta={FlipMeta.NUM_SAMPLES: samples}).to_shareable()
    result.set_header(FlipMeta.METRICS, {"num_samples": samples, "accuracy": 0.5, "loss": 1.0})
    return result


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


class Server:
    """One run's server components on a ServerEngine in ``<tmp>/workspace`` (run folder ``<tmp>/workspace/job-1``
    with its ``app_server/``): ServerEventHandler, ValidationJsonGenerator and PersistToS3AndCleanup (new ones for a
    new model id, unless ``components`` holds the job's own, see ``from_job``), the ``persistor`` and other
    ``components`` if given; the handler reports to the dev platform in ``<tmp>/flip``, or to ``platform``
    (``"settings"``: FLIP() built from the settings at START_RUN, as in a real run).

    ``ctx`` is a context of the run; ``fire`` delivers an event in it; ``run`` runs a job's workflows.
    """

    def __init__(self, tmp_path: Path, persistor=None, platform=None, sites=SITES, components: dict | None = None):
        components = dict(components or {})
        self.platform = LocalPlatform(tmp_path / "flip") if platform is None else platform
        if ComponentId.SERVER_EVENT_HANDLER not in components:
            model_id = str(uuid.uuid4())  # its own S3 prefix: the weed server is shared by the session
            components[ComponentId.JSON_GENERATOR] = ValidationJsonGenerator()
            components[ComponentId.PERSIST_AND_CLEANUP] = PersistToS3AndCleanup(
                model_id=model_id, persistor_id=ComponentId.PERSISTOR if persistor else ""
            )
            components[ComponentId.SERVER_EVENT_HANDLER] = ServerEventHandler(model_id=model_id)
        if persistor is not None:
            components[ComponentId.PERSISTOR] = persistor
        self.handler = components[ComponentId.SERVER_EVENT_HANDLER]
        self.handler.flip = None if self.platform == "settings" else self.platform
        self.json = components[ComponentId.JSON_GENERATOR]
        self.persist = components[ComponentId.PERSIST_AND_CLEANUP]
        self.model_id = self.handler.model_id
        self.workflows: list = []
        self.workspace = tmp_path / "workspace"
        self.run_dir = self.workspace / JOB_ID
        (self.run_dir / "app_server" / "config").mkdir(parents=True)
        self.engine = ServerEngine(
            self.workspace, components, sites=sites, stickers={FLContextKey.APP_ROOT: str(self.run_dir / "app_server")}
        )
        self.ctx = self.engine.new_context()
        self.runner = None

    @classmethod
    def from_job(cls, tmp_path: Path, job: Path, sites=SITES, platform=None) -> Server:
        """The server of the job folder ``job`` (as flip.jobs writes it): its server app's components and workflows
        built from config_fed_server.json by NVFlare's own component builder, with the app's custom/ folder
        importable (as NVFlare does); ``run()`` then runs those workflows."""
        app = Path(job) / "app"
        config = json.loads((app / "config" / "config_fed_server.json").read_text())
        builder = _ComponentBuilder()
        custom = app / "custom"
        own = [p.stem for p in custom.glob("*.py")]  # a job's modules (models...), imported afresh for each job
        for name in own:
            sys.modules.pop(name, None)
        sys.path.insert(0, str(custom))
        try:
            components = {entry["id"]: builder.build_component(entry) for entry in config["components"]}
            workflows = [builder.build_component(entry) for entry in config["workflows"]]
        finally:
            sys.path.remove(str(custom))
            for name in own:
                sys.modules.pop(name, None)
        server = cls(tmp_path, platform=platform, sites=sites, components=components)
        server.workflows = workflows
        return server

    def fire(self, event_type: str, site: str | None = None, **props) -> None:
        if site:
            peer = FLContext()
            peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
            self.ctx.set_peer_context(peer)
        for key, value in props.items():
            self.ctx.set_prop(key, value, private=True, sticky=False)
        self.engine.fire_event(event_type, self.ctx)

    def contribution(self, site: str, round_num: int, metrics: dict, meta: dict | None = None) -> None:
        """A site's train result the aggregator accepted, with its metrics header and DXO meta."""
        result = DXO(
            DataKind.WEIGHT_DIFF,
            data={"w": np.zeros(2, np.float32)},
            meta={FlipMeta.NUM_SAMPLES: metrics.get("num_samples", 10), **(meta or {})},
        ).to_shareable()
        result.set_header(FlipMeta.METRICS, metrics)
        self.fire(
            AppEventType.AFTER_CONTRIBUTION_ACCEPT,
            site,
            **{
                AppConstants.TRAINING_RESULT: result,
                AppConstants.CURRENT_ROUND: round_num,
                AppConstants.AGGREGATION_ACCEPTED: True,
            },
        )

    def one_round(self, meta_by_site: dict[str, dict]) -> None:
        self.fire(EventType.START_RUN)
        self.fire(AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: 0, AppConstants.NUM_ROUNDS: 1})
        for i, (site, meta) in enumerate(sorted(meta_by_site.items())):
            self.contribution(site, 0, {"num_samples": 10 + i, "accuracy": 0.5 + i / 10}, meta)
        self.fire(AppEventType.ROUND_DONE, **{AppConstants.CURRENT_ROUND: 0})

    def run(
        self,
        *workflows,
        reply: Callable[[str, int], Shareable] = update,
        answers: dict[str, Callable[[str, Shareable], Shareable]] | None = None,
    ) -> None:
        """Run the job's ``workflows`` (controllers) as NVFlare's server runs a job (ServerRunner.run, whose order
        tests/unit/test_nvflare_internals.py checks): START_RUN with the run's abort signal in the context, then
        ServerRunner's own workflow loop (each controller's initialize and control_flow in turn; a
        FATAL_SYSTEM_ERROR aborts the run and no later workflow starts), then END_RUN. The sites answer in process
        (``Communicator``); the workflows are components too, so they receive every event.
        """
        from nvflare.private.fed.server.server_json_config import WorkFlow
        from nvflare.private.fed.server.server_runner import ServerRunner, ServerRunnerConfig

        workflows = workflows or self.workflows
        flows = [WorkFlow(f"workflow-{i}", controller) for i, controller in enumerate(workflows)]
        config = ServerRunnerConfig(
            heartbeat_timeout=60,
            task_request_interval=1.0,
            workflows=flows,
            task_data_filters={},
            task_result_filters={},
            handlers=[],
            components={},
        )
        self.runner = ServerRunner(config, JOB_ID, self.engine)
        for flow in flows:
            flow.controller.set_communicator(Communicator(self.engine, reply, answers))
            self.engine.components[flow.id] = flow.controller
        self.engine.handlers.append(self.runner)
        start = self.engine.new_context()
        start.set_prop(ReservedKey.RUN_ABORT_SIGNAL, self.runner.abort_signal, private=True, sticky=True)
        self.engine.fire_event(EventType.START_RUN, start)
        self.runner._execute_run()
        self.engine.fire_event(EventType.END_RUN, self.engine.new_context())

    def metrics_json(self) -> dict:
        """The run folder's metrics.json, read as a strict reader does (NaN and Infinity are errors)."""
        return json.loads((self.run_dir / RunFile.METRICS).read_text(), parse_constant=_refuse_constant)

    def statuses(self) -> list[dict]:
        return self.platform.read_statuses(self.model_id)
