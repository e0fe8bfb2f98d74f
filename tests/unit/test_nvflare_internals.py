"""The NVFlare 2.9.0 internals flip relies on: one test each (docs/nvflare-internals.md lists them, row by row).

Each test checks that the private or undocumented detail still exists and still behaves as flip assumes. A failure
means an NVFlare upgrade changed it: the message says what changed and which flip module to fix; then update the
row in docs/nvflare-internals.md. Where the behaviour can be exercised cheaply the test drives NVFlare's real code
(ScatterAndGather's round loop runs here with an in-process stand-in for the server's task communicator); where it
cannot (the client and server runners' pipelines) it checks the order of the steps in the installed source.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import (
    FedEventHeader,
    FilterKey,
    FLContextKey,
    ReservedKey,
    ReturnCode,
    WorkspaceConstants,
)
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable
from nvflare.app_common.app_constant import AppConstants, DefaultCheckpointFileName
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from flip.constants import SIMULATOR_JOB_ID, ComponentId, FlipEvent, FlipMeta, FlipProp, FlipTask, RunFile
from flip.jobs.common import explicit
from flip.nvflare.components import (
    ClientEventHandler,
    PercentilePrivacy,
    PTModelLocator,
    SampleWeightedAggregator,
    ValidationJsonGenerator,
)
from flip.nvflare.controllers import FlipScatterAndGather, InitTraining, MultiStageScatterAndGather
from flip.nvflare.result_policy import _DXO_KEY, NON_TRAINING_TASKS
from flip.nvflare.utils import peer_name
from flip.provisioning import site_privacy_policy
from tests.fakes import SITES, Communicator, Persistor, Server, ServerEngine, update

pytestmark = pytest.mark.unit

DOC = "docs/nvflare-internals.md"


def changed(what: str, fix: str) -> str:
    """The failure message: what NVFlare changed and the flip module that relies on it."""
    return f"NVFlare changed: {what}. flip relies on it in {fix}: fix it there and update {DOC}"


def in_order(func, needles: list[str], fix: str) -> None:
    """Assert that ``func``'s installed source contains every needle, in this order."""
    source = inspect.getsource(func)
    where = f"{func.__module__}.{func.__qualname__}"
    position, previous = -1, "the start"
    for needle in needles:
        found = source.find(needle, position + 1)
        assert found > position, changed(f"{where} no longer has {needle!r} after {previous!r}", fix)
        position, previous = found, needle


def params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


# -- stand-ins for the parts of a server that only a running NVFlare has --------------------------------------------


class Engine(ServerEngine):
    """The server's engine (tests/fakes.py) that also keeps a snapshot of the context at each event."""

    def __init__(self, root: Path, components: dict | None = None, sites=SITES):
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root, components, sites=sites)
        self.events: list[tuple[str, dict]] = []

    def fire_event(self, event_type, fl_ctx):
        self.events.append(
            (
                event_type,
                {
                    "round": fl_ctx.get_prop(AppConstants.CURRENT_ROUND),
                    "num_rounds": fl_ctx.get_prop(AppConstants.NUM_ROUNDS),
                    "accepted": fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED),
                    "result": fl_ctx.get_prop(AppConstants.TRAINING_RESULT),
                    "report": fl_ctx.get_prop(FlipProp.AGGREGATION_REPORT),
                    "peer": peer_name(fl_ctx, default=None),
                    "data": fl_ctx.get_prop(FLContextKey.EVENT_DATA),
                },
            )
        )
        super().fire_event(event_type, fl_ctx)

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


def run_rounds(tmp_path: Path, workflow, reply=update, aggregator=None):
    """Run ``workflow``'s real start_controller and control_flow over SITES; return the engine and communicator."""
    components = {
        ComponentId.PERSISTOR: Persistor(),
        ComponentId.AGGREGATOR: aggregator or SampleWeightedAggregator(min_accepted=len(SITES)),
        ComponentId.SHAREABLE_GENERATOR: FullModelShareableGenerator(),
        "training": workflow,
    }
    engine = Engine(tmp_path, components)
    communicator = Communicator(engine, reply)
    workflow.set_communicator(communicator)
    fl_ctx = engine.new_context()
    workflow.initialize(fl_ctx)
    workflow.control_flow(Signal(), fl_ctx)
    return engine, communicator


TRAINING = "flip/nvflare/controllers/training.py (FlipScatterAndGather)"
MULTI_STAGE = "flip/nvflare/controllers/multi_stage.py (MultiStageScatterAndGather._prepare_train_task_data)"
EVENTS = "flip/nvflare/components/server_event_handler.py (ServerEventHandler)"


# -- 1. the version ---------------------------------------------------------------------------------------------------


def test_nvflare_is_the_version_the_internals_were_checked_against():
    import nvflare

    assert nvflare.__version__ == "2.9.0", (
        f"nvflare is {nvflare.__version__}, the internals flip relies on were checked against 2.9.0: run this "
        f"file, fix what fails, re-check every row of {DOC}, then update this version and the pin in pyproject.toml"
    )


# -- 2-9. ScatterAndGather and the workflow machinery -----------------------------------------------------------------


def test_sag_prepare_train_task_data_is_the_train_task_hook(tmp_path):
    """2: ``_prepare_train_task_data(client_task, fl_ctx)`` runs once per site and round before the task is sent,
    on data that already carries CURRENT_ROUND; what an override puts in the headers is sent."""
    fix = f"{TRAINING} and {MULTI_STAGE}"
    assert hasattr(ScatterAndGather, "_prepare_train_task_data"), changed(
        "ScatterAndGather._prepare_train_task_data is gone", fix
    )
    assert params(ScatterAndGather._prepare_train_task_data) == ["self", "client_task", "fl_ctx"], changed(
        f"_prepare_train_task_data's parameters are {params(ScatterAndGather._prepare_train_task_data)}", fix
    )
    in_order(
        ScatterAndGather.control_flow,
        ["set_header(AppConstants.CURRENT_ROUND", "before_task_sent_cb=self._prepare_train_task_data"],
        fix,
    )

    workflow = MultiStageScatterAndGather(
        stages=[{"name": "a", "num_rounds": 1}, {"name": "b", "num_rounds": 1}],
        min_clients=2,
        fedprox_mu=0.5,
        model_test_after_each_round=False,
    )
    engine, communicator = run_rounds(tmp_path, workflow)
    got = [
        (s["site"], s["round_before_hook"], s["headers"].get(FlipMeta.STAGE), s["headers"].get(FlipMeta.FEDPROX_MU))
        for s in communicator.sent
    ]
    expected = [("site-1", 0, "a", 0.5), ("site-2", 0, "a", 0.5), ("site-1", 1, "b", 0.5), ("site-2", 1, "b", 0.5)]
    assert got == expected, changed(f"the train task's before-sent hook saw (site, round, stage, mu) {got}", fix)
    assert engine.names().count(AppEventType.BEFORE_TRAIN_TASK) == 4, changed(
        "ScatterAndGather._prepare_train_task_data no longer fires BEFORE_TRAIN_TASK once per site and round", fix
    )


def test_sag_round_settings_are_private_attributes_set_by_init():
    """3: ``_num_rounds``, ``_start_round``, ``_min_clients`` hold the constructor's values, and the round loop and
    the last-round persist read ``_num_rounds`` and ``_start_round`` afresh each round."""
    sag = ScatterAndGather(min_clients=3, num_rounds=4, start_round=1)
    for name, value in (("_min_clients", 3), ("_num_rounds", 4), ("_start_round", 1)):
        assert getattr(sag, name, None) == value, changed(
            f"ScatterAndGather.__init__ no longer sets {name} = {value} (got {getattr(sag, name, 'nothing')!r})",
            TRAINING,
        )
    in_order(
        ScatterAndGather.control_flow,
        [
            "while self._current_round < self._start_round + self._num_rounds",
            "self._current_round == self._start_round + self._num_rounds - 1",
        ],
        TRAINING,
    )


def test_sag_stops_early_when_num_rounds_is_lowered_before_aggregation(tmp_path):
    """4: lowering ``_num_rounds`` at BEFORE_AGGREGATION makes that round the last one for the loop, the persistor
    and the aggregator (NUM_ROUNDS in fl_ctx): how FlipScatterAndGather stops at a site's privacy budget."""
    over_budget = [{"filter": "GaussianPrivacy", "next_epsilon": 9.0, "max_epsilon": 8.0}]

    def reply(site, round_num):
        return update(site, round_num, {FlipMeta.PRIVACY: over_budget} if site == "site-1" else None)

    workflow = FlipScatterAndGather(min_clients=2, num_rounds=3)
    engine, _ = run_rounds(tmp_path, workflow, reply, SampleWeightedAggregator(min_accepted=2, ensemble=True))
    names = engine.names()
    assert names.count(AppEventType.ROUND_STARTED) == 1, changed(
        f"lowering ScatterAndGather._num_rounds at BEFORE_AGGREGATION ran {names.count(AppEventType.ROUND_STARTED)} "
        "rounds instead of stopping after the first",
        TRAINING,
    )
    assert engine.components[ComponentId.PERSISTOR].saved_rounds == [0], changed(
        "the model of the last round is not persisted in that round", TRAINING
    )
    assert (tmp_path / "job-1" / RunFile.ARTIFACTS_DIR / RunFile.ENSEMBLE).is_file(), changed(
        "the aggregator no longer sees the lowered NUM_ROUNDS when it aggregates the last round",
        f"{TRAINING} and flip/nvflare/components/sample_weighted_aggregator.py (finish_round)",
    )
    assert FlipEvent.TRAINING_STOPPED in names, changed(
        "ROUND_DONE no longer reaches the workflow after the cut", TRAINING
    )


def test_sag_round_events_come_in_the_order_flip_assumes(tmp_path):
    """5: per round ROUND_STARTED (NUM_ROUNDS set), one AFTER_CONTRIBUTION_ACCEPT per site carrying
    AGGREGATION_ACCEPTED, TRAINING_RESULT, CURRENT_ROUND and the site as peer, then BEFORE_AGGREGATION, the persist,
    and ROUND_DONE last, with what the aggregator put in fl_ctx still there."""
    engine, _ = run_rounds(tmp_path, FlipScatterAndGather(min_clients=2, num_rounds=2))
    wanted = (
        AppEventType.ROUND_STARTED,
        AppEventType.AFTER_CONTRIBUTION_ACCEPT,
        AppEventType.BEFORE_AGGREGATION,
        AppEventType.BEFORE_LEARNABLE_PERSIST,
        AppEventType.ROUND_DONE,
    )
    seen = [(name, snap) for name, snap in engine.events if name in wanted]
    expected = [
        AppEventType.ROUND_STARTED,
        AppEventType.AFTER_CONTRIBUTION_ACCEPT,
        AppEventType.AFTER_CONTRIBUTION_ACCEPT,
        AppEventType.BEFORE_AGGREGATION,
        AppEventType.BEFORE_LEARNABLE_PERSIST,
        AppEventType.ROUND_DONE,
    ] * 2
    assert [name for name, _ in seen] == expected, changed(
        f"ScatterAndGather's round events are now {[name for name, _ in seen]}", EVENTS + " and " + TRAINING
    )
    for name, snap in seen:
        if name == AppEventType.ROUND_STARTED:
            assert snap["num_rounds"] == 2, changed("NUM_ROUNDS is no longer in fl_ctx at ROUND_STARTED", EVENTS)
        if name == AppEventType.AFTER_CONTRIBUTION_ACCEPT:
            got = {
                "AGGREGATION_ACCEPTED": snap["accepted"],
                "TRAINING_RESULT": type(snap["result"]).__name__,
                "peer": snap["peer"],
            }
            assert got == {"AGGREGATION_ACCEPTED": True, "TRAINING_RESULT": "Shareable", "peer": got["peer"]} and (
                got["peer"] in SITES
            ), changed(f"AFTER_CONTRIBUTION_ACCEPT carries {got}", EVENTS + " and " + TRAINING)
        if name == AppEventType.ROUND_DONE:
            assert snap["report"] is not None and snap["round"] in (0, 1), changed(
                "ROUND_DONE no longer comes in the context the aggregator wrote to", EVENTS
            )


def test_training_finished_is_never_fired():
    """6: no NVFlare workflow fires TRAINING_FINISHED (2.9 defines it, only a metrics collector listens), so the
    ServerEventHandler finishes a run at END_RUN."""
    import nvflare

    root = Path(nvflare.__file__).parent
    fires = re.compile(r"fire_event\w*\([^)]*TRAINING_FINISHED|['\"]_training_finished['\"]")
    firing = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if p.name != "app_event_type.py" and fires.search(p.read_text(errors="replace"))
    )
    assert not firing, changed(
        f"TRAINING_FINISHED is now fired in {firing}: the end of training could be reported there instead of END_RUN",
        EVENTS,
    )
    assert "TRAINING_FINISHED" not in inspect.getsource(ScatterAndGather), changed(
        "ScatterAndGather mentions TRAINING_FINISHED", EVENTS
    )


def test_workflows_receive_every_event():
    """7: a workflow's controller is built as a component and added to the run's event handlers, so
    FlipScatterAndGather.handle_event sees the events it fires itself."""
    from nvflare.private.fed.server.run_manager import RunManager
    from nvflare.private.fed.server.server_json_config import ServerJsonConfigurator

    fix = TRAINING + " (handle_event)"
    in_order(
        ServerJsonConfigurator.process_config_element,
        ["controller = self.authorize_and_build_component(", "self.components[cid] = controller"],
        fix,
    )
    in_order(ServerJsonConfigurator._build_component, ["isinstance(t, FLComponent)", "self.handlers.append(t)"], fix)
    in_order(RunManager.fire_event, ["handlers=self.handlers"], fix)


def test_broadcast_task_data_is_copied_once_after_the_first_sites_hook():
    """8: the server's communicator runs ``before_task_sent_cb`` and then copies a broadcast task's data once, for
    every site: what ``_prepare_train_task_data`` puts on the data must be the same for every site."""
    from nvflare.apis.impl.wf_comm_server import WFCommServer

    in_order(
        WFCommServer._do_process_task_request,
        [
            "task.before_task_sent_cb(client_task=client_task_to_send, fl_ctx=fl_ctx)",
            'if not hasattr(task, "_broadcast_data")',
            "task._broadcast_data = copy.deepcopy(task.data)",
        ],
        f"{TRAINING} and {MULTI_STAGE}",
    )


def test_task_callbacks_are_called_with_keyword_arguments():
    """9: callbacks are called as ``cb(client_task=..., fl_ctx=...)``: flip's must name their parameters so."""
    from nvflare.apis.impl.wf_comm_server import WFCommServer

    fix = (
        "flip/nvflare/controllers/training.py (validate_at_sites.received), evaluate_models.py, swag.py, "
        "feddc.py (_result_received)"
    )
    in_order(WFCommServer._do_process_task_request, ["before_task_sent_cb(client_task=", "fl_ctx=fl_ctx)"], fix)
    in_order(WFCommServer._do_process_submission, ["result_received_cb(client_task=client_task, fl_ctx=fl_ctx)"], fix)


# -- 10. Controller._engine -------------------------------------------------------------------------------------------


def test_controller_engine_is_set_before_start_controller(tmp_path):
    """10: ``Controller.initialize`` sets ``self._engine`` from fl_ctx before it calls ``start_controller``."""
    fix = "flip/nvflare/controllers/init_training.py, evaluate_models.py, feddc.py (self._engine.get_clients())"
    for sites, panics in ((SITES, False), (SITES[:1], True)):
        engine = Engine(tmp_path, sites=sites)
        workflow = InitTraining(min_clients=2)
        workflow.initialize(engine.new_context())
        assert getattr(workflow, "_engine", None) is engine, changed(
            "Controller.initialize no longer sets _engine", fix
        )
        assert (EventType.FATAL_SYSTEM_ERROR in engine.names()) is panics, changed(
            "start_controller no longer runs after _engine is set", fix
        )


# -- 11-13. ValidationJsonGenerator, PTFileModelLocator, PTFileModelPersistor -----------------------------------------


def test_validation_json_generator_private_state_and_end_run_write(tmp_path):
    """11: ``_val_results`` ({site: {model: metrics}}), ``_results_dir``, ``_json_file_name`` are set by __init__;
    VALIDATION_RESULT_RECEIVED reads MODEL_OWNER, DATA_CLIENT, VALIDATION_RESULT; END_RUN writes the JSON at
    ``<run dir>/<_results_dir>/<_json_file_name>``."""
    fix = "flip/nvflare/components/validation_json_generator.py and evaluation_json_generator.py"
    generator = ValidationJsonGenerator(results_dir="cv", json_file_name="r.json")
    state = {n: getattr(generator, n, None) for n in ("_val_results", "_results_dir", "_json_file_name")}
    assert state == {"_val_results": {}, "_results_dir": "cv", "_json_file_name": "r.json"}, changed(
        f"ValidationJsonGenerator.__init__ sets {state}", fix
    )
    fl_ctx = Engine(tmp_path).new_context()
    fl_ctx.set_prop(AppConstants.MODEL_OWNER, "SRV_FL_global_model.pt", private=True, sticky=False)
    fl_ctx.set_prop(AppConstants.DATA_CLIENT, "site-1", private=True, sticky=False)
    fl_ctx.set_prop(
        AppConstants.VALIDATION_RESULT,
        DXO(DataKind.METRICS, data={"accuracy": 0.9}).to_shareable(),
        private=True,
        sticky=False,
    )
    generator.handle_event(AppEventType.VALIDATION_RESULT_RECEIVED, fl_ctx)
    assert generator.results == {"site-1": {"SRV_FL_global_model.pt": {"accuracy": 0.9}}}, changed(
        f"ValidationJsonGenerator records a validation result as {generator.results}", fix
    )
    path = generator.write_results(fl_ctx)
    assert path == tmp_path / "job-1" / "cv" / "r.json" and path.is_file(), changed(
        "ValidationJsonGenerator's END_RUN no longer writes <run dir>/<_results_dir>/<_json_file_name>", fix
    )
    assert json.loads(path.read_text()) == generator.results, changed("the JSON is not _val_results", fix)


def test_pt_file_model_locator_initialize_is_the_start_run_hook(tmp_path):
    """12: START_RUN calls ``_initialize(fl_ctx)``, which finds the persistor (``model_persistor``) or raises
    ValueError; flip's PTModelLocator overrides it and turns that error into a system panic."""
    fix = "flip/nvflare/components/pt_model_locator.py (PTModelLocator._initialize)"
    assert params(PTFileModelLocator._initialize) == ["self", "fl_ctx"], changed(
        f"PTFileModelLocator._initialize's parameters are {params(PTFileModelLocator._initialize)}", fix
    )
    persistor = PTFileModelPersistor()
    engine = Engine(tmp_path, {ComponentId.PERSISTOR: persistor})
    locator = PTModelLocator()
    locator.handle_event(EventType.START_RUN, engine.new_context())
    assert locator.model_persistor is persistor, changed("START_RUN no longer calls _initialize", fix)
    with pytest.raises(ValueError):
        PTFileModelLocator(pt_persistor_id=ComponentId.PERSISTOR)._initialize(Engine(tmp_path).new_context())
    empty = Engine(tmp_path)
    PTModelLocator().handle_event(EventType.START_RUN, empty.new_context())
    assert EventType.FATAL_SYSTEM_ERROR in empty.names(), changed(
        "a missing persistor no longer raises ValueError from _initialize", fix
    )


def test_pt_file_model_persistor_attributes_inventory_and_checkpoint(tmp_path):
    """13: ``global_model_file_name`` / ``best_global_model_file_name`` (``FL_global_model.pt``), ``model`` (a torch
    module once START_RUN built it from ``{"path": ...}``), ``get_model_inventory`` -> descriptors with
    ``.location``, checkpoints ``{"model": state_dict, ...}`` loadable with weights_only, ``get_model``."""
    fix = (
        "flip/nvflare/components/persist_to_s3_and_cleanup.py, controllers/swag.py, components/uncertainty_plan.py "
        "(UncertaintyPlan reads persistor.model)"
    )
    persistor = PTFileModelPersistor(model={"path": "torch.nn.Linear", "args": {"in_features": 2, "out_features": 1}})
    names = (persistor.global_model_file_name, persistor.best_global_model_file_name)
    assert (
        names
        == (RunFile.PERSISTOR_GLOBAL_MODEL, "best_FL_global_model.pt")
        == (DefaultCheckpointFileName.GLOBAL_MODEL, DefaultCheckpointFileName.BEST_GLOBAL_MODEL)
    ), changed(
        f"PTFileModelPersistor's model file names are {names}",
        fix + ", flip/constants.py (RunFile.PERSISTOR_GLOBAL_MODEL) and the README (SRV_FL_global_model.pt)",
    )
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.APP_ROOT, str(tmp_path), private=True, sticky=False)
    persistor.handle_event(EventType.START_RUN, fl_ctx)
    assert isinstance(persistor.model, torch.nn.Module), changed("persistor.model is not a module after START_RUN", fix)
    learnable = persistor.load(fl_ctx)
    learnable[ModelLearnableKey.WEIGHTS]["bias"] = np.array([3.0], np.float32)
    persistor.save(learnable, fl_ctx)
    inventory = persistor.get_model_inventory(fl_ctx)
    location = Path(inventory[persistor.global_model_file_name].location)
    checkpoint = torch.load(location, map_location="cpu", weights_only=True)
    assert isinstance(checkpoint, dict) and float(checkpoint["model"]["bias"][0]) == 3.0, changed(
        "the saved checkpoint is not {'model': state_dict, ...}", fix
    )
    again = persistor.get_model(persistor.global_model_file_name, fl_ctx)
    assert float(again[ModelLearnableKey.WEIGHTS]["bias"][0]) == 3.0, changed("get_model(name) changed", fix)


# -- 14-15. CrossSiteModelEval and the job API ------------------------------------------------------------------------


def test_cross_site_model_eval_without_submit_model_validates_server_models_only():
    """14: ``submit_model_task_name=""`` skips the submit_model phase (local models never leave a site); the
    validation task name is ``_validation_task_name``; server models are named ``SRV_<file name>``."""
    fix = "flip/jobs/common.py (add_training_server) and the README's results layout (SRV_FL_global_model.pt)"
    cse = CrossSiteModelEval(
        model_locator_id="model_locator", submit_model_task_name="", validation_task_name="validate"
    )
    state = (getattr(cse, "_submit_model_task_name", None), getattr(cse, "_validation_task_name", None))
    assert state == ("", "validate"), changed(f"CrossSiteModelEval keeps its task names as {state}", fix)
    in_order(
        CrossSiteModelEval.control_flow, ["if self._submit_model_task_name:", "name=self._submit_model_task_name"], fix
    )
    in_order(
        CrossSiteModelEval._locate_server_models,
        ['unique_name = "SRV_" + name'],
        fix + " and flip/constants.py (RunFile.SERVER_MODEL)",
    )
    assert RunFile.SERVER_MODEL == "SRV_" + RunFile.PERSISTOR_GLOBAL_MODEL
    assert AppConstants.TASK_VALIDATION in NON_TRAINING_TASKS, changed(
        f"AppConstants.TASK_VALIDATION is now {AppConstants.TASK_VALIDATION!r}", "flip/nvflare/result_policy.py"
    )


def test_job_api_writes_always_serialize_args_and_reads_underscore_attributes(tmp_path):
    """15: the job API writes a component's argument when it differs from its default or is named in
    ``_always_serialize_args`` (flip/jobs/common.py ``explicit``, PercentilePrivacy), reading it from the attribute
    ``<name>`` or ``_<name>``."""
    from nvflare.job_config.api import FedJob
    from nvflare.job_config.defs import FilterType

    fix = "flip/jobs/common.py (explicit) and flip/nvflare/components/percentile_privacy.py (_always_serialize_args)"
    written = {}
    for name, cse in (
        ("plain", CrossSiteModelEval(model_locator_id="m", submit_model_task_name="")),
        (
            "explicit",
            explicit(CrossSiteModelEval(model_locator_id="m", submit_model_task_name=""), "validation_task_name"),
        ),
    ):
        job = FedJob(name=name, min_clients=1)
        job.to_server(cse, id="cse")
        job.to_clients(PercentilePrivacy(), filter_type=FilterType.TASK_RESULT, tasks=["train"])
        job.export_job(str(tmp_path))
        server = json.loads(next((tmp_path / name).rglob("config_fed_server.json")).read_text())
        client = json.loads(next((tmp_path / name).rglob("config_fed_client.json")).read_text())
        written[name] = (server["workflows"][0]["args"], client["task_result_filters"][0]["filters"][0]["args"])
    assert written["plain"][0] == {"model_locator_id": "m", "submit_model_task_name": ""}, changed(
        f"the job API writes CrossSiteModelEval's arguments as {written['plain'][0]} (read from _<name> attributes)",
        fix,
    )
    assert written["explicit"][0].get("validation_task_name") == "validate", changed(
        "_always_serialize_args no longer makes the job API write an argument at its default", fix
    )
    assert {"percentile": 10, "gamma": 0.01}.items() <= written["plain"][1].items(), changed(
        f"PercentilePrivacy's class-level _always_serialize_args is ignored: {written['plain'][1]}", fix
    )


# -- 16-17. DXO storage and DXOFilter ---------------------------------------------------------------------------------


def test_dxo_is_stored_under_the_dxo_key_beside_the_headers():
    """16: a DXO's Shareable holds exactly the headers (content type "DXO") and the DXO under the key "DXO"; a
    reply without data holds only headers. flip's result policy refuses anything else beside them."""
    from nvflare.apis import dxo as dxo_module

    fix = "flip/nvflare/result_policy.py (_DXO_KEY, check_result)"
    assert getattr(dxo_module, "_KEY_DXO", None) == _DXO_KEY, changed(
        f"nvflare.apis.dxo stores a DXO under {getattr(dxo_module, '_KEY_DXO', None)!r}, not {_DXO_KEY!r}", fix
    )
    shareable = DXO(DataKind.WEIGHT_DIFF, data={"w": np.ones(2)}).to_shareable()
    assert sorted(shareable) == sorted([ReservedHeaderKey.HEADERS, _DXO_KEY]), changed(
        f"a DXO's Shareable holds {sorted(shareable)}", fix
    )
    assert shareable.get_header(ReservedHeaderKey.CONTENT_TYPE) == _DXO_KEY, changed("a DXO's content type", fix)
    reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    reply.add_cookie(AppConstants.CONTRIBUTION_ROUND, 1)
    assert list(reply) == [ReservedHeaderKey.HEADERS], changed(f"an error reply holds {list(reply)}", fix)


def test_dxo_filter_passes_errors_and_filters_each_collection_leaf():
    """17: ``DXOFilter.process`` returns error replies and non-DXO Shareables unchanged (so flip's filters decide
    what may leave *before* calling it), calls ``process_dxo`` for each leaf of a COLLECTION whose kind it filters,
    and keeps the Shareable's headers."""
    fix = "flip/nvflare/components/percentile_privacy.py, gaussian_privacy.py (process before super().process)"

    class Recorder(DXOFilter):
        def __init__(self):
            super().__init__(supported_data_kinds=[DataKind.WEIGHT_DIFF], data_kinds_to_filter=None)
            self.seen: list[list[str]] = []

        def process_dxo(self, dxo, shareable, fl_ctx):
            self.seen.append(sorted(dxo.data))
            dxo.data = {k: np.zeros_like(v) for k, v in dxo.data.items()}
            return dxo

    recorder = Recorder()
    error, plain = make_reply(ReturnCode.EXECUTION_EXCEPTION), Shareable()
    plain["x"] = np.ones(3)
    assert recorder.process(error, FLContext()) is error and recorder.process(plain, FLContext()) is plain, changed(
        "DXOFilter.process no longer passes error replies and non-DXO results unchanged", fix
    )
    collection = DXO(
        DataKind.COLLECTION,
        data={
            "mean": DXO(DataKind.WEIGHT_DIFF, data={"a": np.ones(2)}),
            "second": DXO(DataKind.COLLECTION, data={"b": DXO(DataKind.WEIGHT_DIFF, data={"b": np.ones(2)})}),
            "scores": DXO(DataKind.METRICS, data={"loss": 1.0}),
        },
    ).to_shareable()
    collection.set_header(FlipMeta.METRICS, {"loss": 1.0})
    out = recorder.process(collection, FLContext())
    assert recorder.seen == [["a"], ["b"]], changed(f"DXOFilter filtered the COLLECTION's leaves {recorder.seen}", fix)
    assert out.get_header(FlipMeta.METRICS) == {"loss": 1.0}, changed("DXOFilter.process drops the headers", fix)
    assert not from_shareable(out).data["mean"].data["a"].any(), changed("a filtered leaf is not sent", fix)


# -- 18-23. the client's and the server's task pipelines, panics, fed events ------------------------------------------


def test_client_runner_runs_after_task_execution_before_the_result_filters():
    """18: at a site, TASK_NAME is in fl_ctx while the executor runs; the result is put in TASK_RESULT, then
    AFTER_TASK_EXECUTION fires (ClientEventHandler adds the metrics header), then the result filters run in the same
    context (site scope first, see test 20) and a filter's exception becomes TASK_RESULT_FILTER_ERROR."""
    from nvflare.private.fed.client.client_runner import ClientRunner

    in_order(
        ClientRunner._do_task,
        [
            "fl_ctx.set_prop(FLContextKey.TASK_NAME, value=task.name",
            "reply = executor.execute(task.name, task.data, fl_ctx, abort_signal)",
            "fl_ctx.set_prop(FLContextKey.TASK_RESULT, value=reply",
            "self.fire_event(EventType.AFTER_TASK_EXECUTION, fl_ctx)",
            "reply = apply_filters(",
            "fl_ctx,",
            "reply=make_reply(ReturnCode.TASK_RESULT_FILTER_ERROR)",
        ],
        "flip/nvflare/components/client_event_handler.py, flip/nvflare/result_policy.py (FLContextKey.TASK_NAME), "
        "executors/run_trainer.py (FlipProp.TASK_METRICS)",
    )


def test_sites_echo_the_task_cookies_in_their_result():
    """19: a site copies the task's cookie jar (ScatterAndGather's CONTRIBUTION_ROUND) into its result."""
    from nvflare.private.fed.client.client_runner import ClientRunner

    fix = "flip/nvflare/components/sample_weighted_aggregator.py (SampleWeightedAggregator._check) and controllers/feddc.py"
    in_order(
        ClientRunner._process_task, ["cookie_jar = task.data.get_cookie_jar()", "reply.set_cookie_jar(cookie_jar)"], fix
    )
    in_order(ScatterAndGather.control_flow, ["add_cookie(AppConstants.CONTRIBUTION_ROUND, self._current_round)"], fix)
    task = Shareable()
    task.add_cookie(AppConstants.CONTRIBUTION_ROUND, 2)
    reply = Shareable()
    reply.set_cookie_jar(task.get_cookie_jar())
    assert reply.get_cookie(AppConstants.CONTRIBUTION_ROUND) == 2, changed("Shareable cookies", fix)


def test_site_privacy_scope_filters_every_result_before_the_jobs(tmp_path):
    """20: a site's local/privacy.json (as FlipSiteBuilder writes it) gives a default scope whose result filters
    run, outbound, on every task's result, before the job's own filters."""
    from nvflare.apis.utils.task_utils import get_filters
    from nvflare.private.fed.app.fl_conf import create_privacy_manager
    from nvflare.private.fed.utils.fed_utils import create_job_processing_context_properties

    fix = "flip/provisioning.py (site_privacy_policy) and the README (Who controls the privacy filter)"
    assert WorkspaceConstants.PRIVACY_CONFIG == "privacy.json", changed(
        f"the site policy file is {WorkspaceConstants.PRIVACY_CONFIG}", fix
    )
    engine = Engine(tmp_path)
    (tmp_path / "local" / "privacy.json").write_text(json.dumps(site_privacy_policy()))
    manager = create_privacy_manager(engine.workspace, names_only=False, is_server=False)
    scope = manager.get_scope("")  # a job that names no scope gets the default one
    site_filters = scope.task_result_filters.get(FilterKey.OUT, []) if scope else []
    assert [type(f) for f in site_filters] == [PercentilePrivacy], changed(
        f"privacy.json's default scope gives the outbound result filters {site_filters}", fix
    )
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.SCOPE_OBJECT, scope, private=True, sticky=False)
    job_filter = PercentilePrivacy(off=True)
    job_filters = {FlipTask.TRAIN + FilterKey.DELIMITER + FilterKey.OUT: [job_filter]}
    chain = get_filters("task_result_filters", fl_ctx, job_filters, FlipTask.TRAIN, FilterKey.OUT)
    assert chain == [*site_filters, job_filter], changed(
        "a train result's filter chain is " + str(["job's" if f is job_filter else "site's" for f in chain]), fix
    )
    for task in (FlipTask.VALIDATE, "anything", ""):
        assert get_filters("task_result_filters", fl_ctx, job_filters, task, FilterKey.OUT) == site_filters, changed(
            f"the site scope's filters do not run on the result of task {task!r}", fix
        )
    in_order(
        create_job_processing_context_properties,
        [
            'scope_name = job_meta.get(JobMetaKey.SCOPE, "")',
            "scope_object = PrivacyService.get_scope(scope_name)",
            "FLContextKey.SCOPE_OBJECT: scope_object",
        ],
        fix,
    )


def test_server_runner_filters_then_fires_before_process_submission():
    """21: on the server, a result's TASK_NAME and TASK_RESULT are set, the server's result filters run, TASK_RESULT
    is set again, BEFORE_PROCESS_SUBMISSION fires, and only then does the workflow get the result."""
    from nvflare.private.fed.server.server_runner import ServerRunner

    in_order(
        ServerRunner._process_submission,
        [
            "fl_ctx.set_prop(FLContextKey.TASK_NAME, value=task_name",
            "fl_ctx.set_prop(FLContextKey.TASK_RESULT, value=result",
            "result = apply_filters(",
            "fl_ctx.set_prop(FLContextKey.TASK_RESULT, value=result",
            "self.fire_event(EventType.BEFORE_PROCESS_SUBMISSION, fl_ctx)",
            "communicator.process_submission(",
        ],
        EVENTS + " (_submission: a site's failure reason)",
    )


def test_system_panic_fires_fatal_error_with_its_reason(tmp_path):
    """22: ``system_panic`` fires FATAL_SYSTEM_ERROR with the reason in EVENT_DATA; the server runner then marks
    the run with the sticky FLContextKey.FATAL_SYSTEM_ERROR, which the ServerEventHandler reads at END_RUN."""
    from nvflare.private.fed.server.server_runner import ServerRunner

    engine = Engine(tmp_path)
    ClientEventHandler().system_panic("the reason", engine.new_context())
    assert [(n, s["data"]) for n, s in engine.events] == [(EventType.FATAL_SYSTEM_ERROR, "the reason")], changed(
        f"system_panic fired {[(n, s['data']) for n, s in engine.events]}", EVENTS
    )
    in_order(
        ServerRunner.handle_event,
        [
            "elif event_type == EventType.FATAL_SYSTEM_ERROR:",
            "fl_ctx.set_prop(key=FLContextKey.FATAL_SYSTEM_ERROR, value=True",
            "sticky=True",
        ],
        EVENTS + " (_end)",
    )


def test_server_runner_runs_the_workflows_between_start_and_end_run_and_stops_at_a_panic(tmp_path):
    """35: ServerRunner.run fires START_RUN (the run's abort signal in the context), runs the workflows in turn
    (``initialize``, which calls ``start_controller``, then ``control_flow``), then END_RUN; FATAL_SYSTEM_ERROR aborts
    the run and no later workflow starts. tests/fakes.py's ``Server.run`` drives this same loop (``_execute_run``)
    between its own START_RUN and END_RUN; it is here run for real with a workflow that panics at its start."""
    from nvflare.private.fed.server.server_runner import ServerRunner

    fix = EVENTS + " (_end) and tests/fakes.py (Server.run)"
    in_order(
        ServerRunner.run,
        [
            "fl_ctx.set_prop(ReservedKey.RUN_ABORT_SIGNAL, self.abort_signal",
            "self.fire_event(EventType.START_RUN, fl_ctx)",
            "self._execute_run()",
            "self.fire_event(EventType.END_RUN, fl_ctx)",
        ],
        fix,
    )
    in_order(
        ServerRunner._execute_run,
        [
            "wf.controller.initialize(fl_ctx)",
            "wf.controller.control_flow(self.abort_signal, fl_ctx)",
            "self.system_panic(",
            "if self.abort_signal.triggered:",
            "break",
        ],
        fix,
    )
    in_order(ServerRunner.handle_event, ["elif event_type == EventType.FATAL_SYSTEM_ERROR:", "self.abort(fl_ctx)"], fix)

    server = Server(tmp_path, sites=SITES[:1])
    later = FlipScatterAndGather(min_clients=1, num_rounds=1)
    server.run(InitTraining(min_clients=2), later)
    assert server.runner.abort_signal.triggered and server.handler.fatal_error, changed(
        "a panic in start_controller no longer aborts the run", fix
    )
    assert AppEventType.ROUND_STARTED not in server.engine.fired and not later.communicator.sent, changed(
        "a workflow after an aborted one still runs", fix
    )


def test_fed_event_carries_the_shareable_to_the_server(tmp_path):
    """23: a site's ``fire_fed_event(event, shareable)`` is sent with its headers (flip's site name and reason) and
    the event type; the server fires it with the Shareable as EVENT_DATA."""
    from nvflare.widgets.fed_event import FedEventRunner

    fix = "flip/nvflare/components/client_event_handler.py (send_site_error) and server_event_handler.py (_site_error)"

    class Outbox(FedEventRunner):
        def __init__(self):
            super().__init__()
            self.sent: list[Shareable] = []

        def fire_and_forget_request(self, request, fl_ctx, targets=None, secure=False):
            self.sent.append(request)

    outbox = Outbox()
    engine = Engine(tmp_path, {"fed_event_runner": outbox})
    fl_ctx = engine.new_context()
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=False)
    ClientEventHandler().send_site_error(fl_ctx, "trainer.py not found")
    got = [
        tuple(s.get_header(h) for h in (FedEventHeader.EVENT_TYPE, FlipMeta.SITE_NAME, FlipMeta.ERROR_REASON))
        for s in outbox.sent
    ]
    assert got == [(FlipEvent.SITE_ERROR, "site-1", "trainer.py not found")], changed(
        f"a fed event is sent as {got}", fix
    )
    in_order(
        FedEventRunner._post,
        [
            "fl_ctx.set_prop(key=FLContextKey.EVENT_DATA, value=event_to_post",
            "event_type = event_to_post.get_header(FedEventHeader.EVENT_TYPE)",
            "self.engine.fire_event(event_type=event_type, fl_ctx=fl_ctx)",
        ],
        fix,
    )


# -- 24-26. provisioning ----------------------------------------------------------------------------------------------


def test_class_allow_list_in_resources_admits_flip_by_prefix(tmp_path):
    """24: every kit's resources.json.default gets a top-level ``class_allow_list`` (a list FlipSiteBuilder extends
    with ``flip.``); an entry ending in "." admits every class path under it; without the entry NVFlare's default
    list applies, which has no flip class."""
    import nvflare.lighter
    from nvflare.apis.fl_exception import UnsafeComponentError
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST
    from nvflare.app_common.widgets.component_path_authorizer import ComponentPathAuthorizer

    fix = "flip/provisioning.py (FlipSiteBuilder.build)"
    template = (Path(nvflare.lighter.__file__).parent / "templates" / "master_template.yml").read_text()
    assert template.count('"class_allow_list": {~~class_allow_list~~}') == 2, changed(
        "master_template.yml no longer writes class_allow_list into the server's and the sites' resources", fix
    )
    assert not [p for p in DEFAULT_CLASS_ALLOW_LIST if p.startswith("flip")]
    path = {"path": "flip.nvflare.components.PercentilePrivacy"}
    for name, resources, allowed in (
        ("listed", {"class_allow_list": ["nvflare.", "flip."]}, True),
        ("other", {"class_allow_list": ["nvflare."]}, False),
        ("absent", {}, False),
    ):
        root = tmp_path / name
        workspace = Engine(root).workspace
        (root / "local" / "resources.json.default").write_text(json.dumps(resources))
        try:
            ComponentPathAuthorizer().authorize_component_config(path, workspace=workspace)
            admitted = True
        except UnsafeComponentError:
            admitted = False
        assert admitted is allowed, changed(
            f"class_allow_list {resources} {'admits' if admitted else 'refuses'} flip's classes", fix
        )


def test_allow_log_streaming_is_read_from_the_kits_resources(tmp_path):
    """25: a site streams its job logs unless ``allow_log_streaming`` is false in local/resources.json (or, absent
    that, resources.json.default): the key FlipSiteBuilder writes (PropKey.ALLOW_LOG_STREAMING)."""
    from nvflare.app_common.logging.constants import ALLOW_LOG_STREAMING_VAR, is_log_streaming_allowed
    from nvflare.lighter.constants import PropKey

    fix = "flip/provisioning.py (FlipSiteBuilder: allow_log_streaming)"
    assert PropKey.ALLOW_LOG_STREAMING == ALLOW_LOG_STREAMING_VAR == "allow_log_streaming", changed(
        f"the log streaming key is {PropKey.ALLOW_LOG_STREAMING!r} / {ALLOW_LOG_STREAMING_VAR!r}", fix
    )
    for name, resources, allowed in (("off", {"allow_log_streaming": False}, False), ("default", {}, True)):
        root = tmp_path / name
        Engine(root)
        (root / "local" / "resources.json.default").write_text(json.dumps(resources))
        fl_ctx = FLContext()
        fl_ctx.set_prop(FLContextKey.WORKSPACE_ROOT, str(root), private=True, sticky=False)
        fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=True, sticky=False)
        assert is_log_streaming_allowed(fl_ctx) is allowed, changed(
            f"with resources {resources} log streaming allowed is {not allowed}", fix
        )


def test_provisioning_builder_api():
    """26: a builder named in project.yml gets ``build(project, ctx)`` after the builders before it (StaticFileBuilder
    writes resources.json.default first); flip uses ``ctx.get_local_dir``, ``project.get_clients/get_server`` and
    ``participant.get_prop``."""
    from nvflare.lighter.ctx import ProvisionContext
    from nvflare.lighter.entity import Participant, Project
    from nvflare.lighter.provisioner import Provisioner
    from nvflare.lighter.spec import Builder

    fix = "flip/provisioning.py (FlipSiteBuilder)"
    assert params(Builder.build) == ["self", "project", "ctx"], changed(
        f"Builder.build is {params(Builder.build)}", fix
    )
    for owner, name in (
        (ProvisionContext, "get_local_dir"),
        (Project, "get_clients"),
        (Project, "get_server"),
        (Participant, "get_prop"),
    ):
        assert callable(getattr(owner, name, None)), changed(f"{owner.__name__}.{name} is gone", fix)
    in_order(
        Provisioner._build,
        ["for b in self.builders:", "b.initialize(project, ctx)", "for b in self.builders:", "b.build(project, ctx)"],
        fix,
    )


# -- 27-31. the simulator and its logs --------------------------------------------------------------------------------


def test_simulator_runner_arguments_and_end_run_for_all():
    """27: ``SimulatorRunner(job_folder, workspace, clients, threads, end_run_for_all)`` (nvflare.private),
    ``run()`` returns the exit code; with ``end_run_for_all`` every site gets END_RUN even with fewer threads."""
    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorClientRunner, SimulatorRunner

    fix = "flip/simulate.py (run_simulator)"
    got = params(SimulatorRunner.__init__)
    assert {"job_folder", "workspace", "clients", "threads", "end_run_for_all"} <= set(got), changed(
        f"SimulatorRunner's arguments are {got}", fix
    )
    in_order(SimulatorRunner.run, ["run_status = self._get_return_code(", "return run_status"], fix)
    in_order(SimulatorRunner.setup, ["self.args.end_run_for_all = self.end_run_for_all"], fix)
    in_order(SimulatorClientRunner.run_client_thread, ["if end_run_for_all:", "self._end_run_clients("], fix)


def test_simulator_reads_the_workspace_log_config():
    """28: the simulator takes its logging from ``<workspace>/local/log_config.json``; flip's console config starts
    from NVFlare's default one and rewires its console handler."""
    import nvflare.fuel.utils.log_utils as log_utils
    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorRunner

    import flip.simulate

    fix = "flip/simulate.py (console_log_config, _LOG_CONFIG)"
    assert WorkspaceConstants.LOGGING_CONFIG == flip.simulate._LOG_CONFIG, changed(
        f"the log config file is {WorkspaceConstants.LOGGING_CONFIG}", fix
    )
    in_order(
        SimulatorRunner.setup, ['os.path.join(self.args.workspace, "local", WorkspaceConstants.LOGGING_CONFIG)'], fix
    )
    default = json.loads((Path(log_utils.__file__).parent / "log_config.json").read_text())
    assert {"filters", "formatters"} <= set(default) and "consoleHandler" in default.get("handlers", {}), changed(
        f"NVFlare's default log_config.json has {sorted(default)}", fix
    )
    flip.simulate.console_log_config()


def test_console_log_filter_and_formatter_show_flip_lines():
    """29: LoggerNameFilter(logger_names, allow_all_error_logs) passes flip's loggers (named after the component's
    module and class) and everyone's warnings; BaseFormatter fills ``%(fl_ctx)s`` from the "[k=v, ...]: " prefix."""
    from nvflare.fuel.utils.class_utils import instantiate_class

    import flip.simulate

    fix = "flip/simulate.py (console_log_config)"
    config = flip.simulate.console_log_config()
    spec = {k: v for k, v in config["filters"]["FlipConsole"].items() if k != "()"}
    console = instantiate_class(config["filters"]["FlipConsole"]["()"], spec)
    spec = {k: v for k, v in config["formatters"]["flipConsole"].items() if k != "()"}
    formatter = instantiate_class(config["formatters"]["flipConsole"]["()"], spec)
    flip_logger = PercentilePrivacy().logger.name
    assert flip_logger == "flip.nvflare.components.percentile_privacy.PercentilePrivacy", changed(
        f"a component's logger is named {flip_logger!r}", fix
    )

    def record(name, level, msg):
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    passed = [
        console.filter(record(flip_logger, logging.INFO, "x")),
        console.filter(record("nvflare.app_common.x", logging.INFO, "x")),
        console.filter(record("nvflare.app_common.x", logging.WARNING, "x")),
    ]
    assert passed == [True, False, True], changed(
        f"LoggerNameFilter passes {passed} (flip info, nvflare info, nvflare warning)", fix
    )
    line = formatter.format(record(flip_logger, logging.INFO, "[identity=site-1, run=job-1]: round 1 done"))
    assert "[identity=site-1, run=job-1]" in line and line.endswith("round 1 done"), changed(
        f"BaseFormatter renders {line!r}", fix
    )


def test_simulator_job_id():
    """30: every simulator run has the job id ``simulate_job`` (flip makes run ids unique for the S3 key)."""
    from nvflare.private.fed.simulator.simulator_const import SimulatorConstants

    assert SimulatorConstants.JOB_NAME == SIMULATOR_JOB_ID, changed(
        f"the simulator's job id is {SimulatorConstants.JOB_NAME!r}", "flip/constants.py (SIMULATOR_JOB_ID)"
    )


def test_run_logs_are_the_files_cleanup_keeps():
    """31: NVFlare's run logs (every file handler of its default log_config.json) are what the cleanup keeps."""
    import nvflare.fuel.utils.log_utils as log_utils

    from flip.storage.pending import is_log_file

    default = json.loads((Path(log_utils.__file__).parent / "log_config.json").read_text())
    files = sorted(h["filename"] for h in default["handlers"].values() if "filename" in h)
    assert files and all(is_log_file(f) for f in files), changed(
        f"NVFlare's run logs are {files}", "flip/storage/pending.py (is_log_file)"
    )
    assert is_log_file(WorkspaceConstants.LOG_FILE_NAME) and is_log_file(WorkspaceConstants.ERROR_LOG_FILE_NAME)


# -- 32-34. shareable generator, class loading, context keys ----------------------------------------------------------


def test_full_model_shareable_generator_adds_the_diff_to_the_global_model():
    """32: ``shareable_to_learnable`` adds a WEIGHT_DIFF to fl_ctx's GLOBAL_MODEL (ScatterAndGather sets it each
    round) and returns that learnable; FedOptShareableGenerator overrides just this method."""
    from flip.nvflare.components import FedOptShareableGenerator

    fix = "flip/nvflare/components/fedopt_shareable_generator.py (FedOptShareableGenerator) and flip/jobs/standard.py"
    assert FedOptShareableGenerator.learnable_to_shareable is FullModelShareableGenerator.learnable_to_shareable
    fl_ctx = FLContext()
    model = make_model_learnable({"w": np.array([1.0, 2.0])}, {})
    fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, model, private=True, sticky=False)
    diff = DXO(DataKind.WEIGHT_DIFF, data={"w": np.array([0.5, -1.0])}).to_shareable()
    out = FullModelShareableGenerator().shareable_to_learnable(diff, fl_ctx)
    assert out is model and out[ModelLearnableKey.WEIGHTS]["w"].tolist() == [1.5, 1.0], changed(
        "FullModelShareableGenerator.shareable_to_learnable no longer adds the diff to GLOBAL_MODEL", fix
    )
    sent = from_shareable(FullModelShareableGenerator().learnable_to_shareable(model, fl_ctx))
    assert sent.data_kind == DataKind.WEIGHTS, changed(
        "learnable_to_shareable no longer sends WEIGHTS", "flip/nvflare/executors/base.py (model_from_task)"
    )


def test_instantiate_class_builds_a_path_and_args():
    """33: ``instantiate_class(path, args)`` (nvflare.fuel) builds ``{"path", "args"}`` model configs; a bad path
    raises TypeError, bad arguments ValueError (flip turns both into a ValueError naming the path)."""
    from nvflare.fuel.utils.class_utils import instantiate_class

    fix = "flip/nvflare/models.py (resolve_model)"
    built = instantiate_class("torch.nn.Linear", {"in_features": 2, "out_features": 1})
    assert isinstance(built, torch.nn.Linear), changed("instantiate_class", fix)
    for path, args in (("no_such_module.Model", {}), ("torch.nn.Linear", {"bad": 1})):
        with pytest.raises((TypeError, ValueError, ImportError)):
            instantiate_class(path, args)


@pytest.mark.parametrize(
    "owner, name",
    [
        (FLContextKey, "TASK_NAME"),
        (FLContextKey, "TASK_RESULT"),
        (FLContextKey, "EVENT_DATA"),
        (FLContextKey, "FATAL_SYSTEM_ERROR"),
        (FLContextKey, "SCOPE_OBJECT"),
        (FLContextKey, "WORKSPACE_ROOT"),
        (AppConstants, "CONTRIBUTION_ROUND"),
        (AppConstants, "CURRENT_ROUND"),
        (AppConstants, "NUM_ROUNDS"),
        (AppConstants, "START_ROUND"),
        (AppConstants, "GLOBAL_MODEL"),
        (AppConstants, "TRAINING_RESULT"),
        (AppConstants, "AGGREGATION_ACCEPTED"),
        (AppConstants, "MODEL_OWNER"),
        (AppConstants, "DATA_CLIENT"),
        (AppConstants, "VALIDATION_RESULT"),
        (AppEventType, "TRAINING_STARTED"),
        (AppEventType, "ROUND_STARTED"),
        (AppEventType, "AFTER_CONTRIBUTION_ACCEPT"),
        (AppEventType, "BEFORE_AGGREGATION"),
        (AppEventType, "ROUND_DONE"),
        (AppEventType, "VALIDATION_RESULT_RECEIVED"),
        (EventType, "START_WORKFLOW"),
        (EventType, "BEFORE_PROCESS_SUBMISSION"),
        (EventType, "AFTER_TASK_EXECUTION"),
    ],
)
def test_context_keys_and_events_flip_reads_exist(owner, name):
    """34: the fl_ctx keys and event types flip reads or reacts to."""
    assert isinstance(getattr(owner, name, None), str), changed(
        f"{owner.__name__}.{name} is gone", "the flip modules that use it (grep flip/ for it)"
    )


# -- 35-39. operating a network: removed sites, certificates, TLS, storage, the kit's watchdog ------------------------


def test_disabled_clients_file_is_read_at_start_and_refuses_by_name(tmp_path):
    """35: the server's ClientManager reads ``<server workspace>/disabled_clients.json`` (``{"disabled_clients":
    [...]}``) when FederatedServer starts, and refuses a disabled name's registration and heartbeats; ``nvflare
    system disable-client`` writes the same file."""
    from nvflare.private.fed.server import fed_server
    from nvflare.private.fed.server.client_manager import ClientManager

    from flip.provisioning import DISABLED_CLIENTS_FILE

    fix = "flip/provisioning.py (FlipSiteBuilder: removed_sites, DISABLED_CLIENTS_FILE)"
    assert f'"{DISABLED_CLIENTS_FILE}"' in inspect.getsource(fed_server.FederatedServer.__init__), changed(
        f"FederatedServer no longer reads {DISABLED_CLIENTS_FILE} from its workspace", fix
    )
    path = tmp_path / DISABLED_CLIENTS_FILE
    path.write_text(json.dumps({"disabled_clients": ["hospital-b"]}))
    manager = ClientManager(project_name="flip")
    manager.set_disabled_clients_file(str(path))
    assert manager.is_client_disabled("hospital-b") and not manager.is_client_disabled("hospital-a"), changed(
        f"{DISABLED_CLIENTS_FILE} in the form flip writes does not disable the site", fix
    )
    in_order(ClientManager.authenticated_client, ["if client_name in self.disabled_clients:", "return None"], fix)
    in_order(ClientManager.heartbeat, ["if client_name in self.disabled_clients:", "return False"], fix)


def test_cert_builder_state_root_and_names():
    """36: CertBuilder keeps the root CA (``root_cert``, ``root_pri_key``) and each participant's certificate and key
    (by subject) in ``state/cert.json`` and reuses them; takes ``root_valid_days``; a participant's certificate is
    valid 360 days (never past the root); the server's SAN is its default host then its ``host_names``."""
    from cryptography import x509
    from nvflare.lighter.constants import CtxKey, PropKey
    from nvflare.lighter.impl import cert
    from nvflare.lighter.utils import build_subject_alt_names

    fix = "flip/provisioning.py (renew, remove_site, ROOT_VALID_DAYS, server_host_names) and flip/ops/certs.py"
    assert (CtxKey.ROOT_CERT, CtxKey.ROOT_PRI_KEY, cert._CertState.CERT_STATE_FILE) == (
        "root_cert",
        "root_pri_key",
        "cert.json",
    ), changed("the provisioning state's keys or file name", fix)
    assert cert.DEFAULT_CERT_VALID_DAYS == 360, changed(f"certificates last {cert.DEFAULT_CERT_VALID_DAYS} days", fix)
    assert "root_valid_days" in params(cert.CertBuilder.__init__), changed("CertBuilder takes no root_valid_days", fix)
    in_order(
        cert.CertBuilder._build_write_cert_pair,
        ["if self.persistent_state.has_subject(subject):", "else:", "self.get_pri_key_cert(participant)"],
        fix,
    )
    assert PropKey.HOST_NAMES == "host_names", changed(f"the server's other names are {PropKey.HOST_NAMES!r}", fix)
    names = build_subject_alt_names("localhost", ["fl.example.org", "127.0.0.1"])
    assert [type(n).__name__ for n in names] == ["DNSName", "DNSName", "IPAddress"], changed(
        f"the SAN of a server is {names}", fix
    )
    assert isinstance(names[2], x509.IPAddress)


def test_sites_do_not_check_the_servers_host_name():
    """37: NVFlare's TLS client checks the server's certificate against the root CA but not the host name
    (``check_hostname = False``); the server's identity is its certificate's common name."""
    from nvflare.fuel.f3.drivers import net_utils

    in_order(
        net_utils.get_ssl_context,
        ["ctx.check_hostname = False"],
        "flip/ops/doctor.py (tls_probe: a name missing from the SAN is a warning) and the README's TLS names",
    )


def test_update_storage_locations_moves_the_servers_job_store(tmp_path):
    """38: ``update_storage_locations(local_dir, workspace)`` writes ``local/resources.json`` with the job store at
    ``<workspace>/jobs-storage`` and snapshots at ``<workspace>/snapshot-storage`` (what ``nvflare poc`` uses)."""
    from nvflare.lighter.utils import update_storage_locations

    fix = "flip/provisioning.py (FlipSiteBuilder: server_storage)"
    (tmp_path / "resources.json.default").write_text(
        json.dumps(
            {
                "snapshot_persistor": {"args": {"storage": {"args": {"root_dir": "/tmp/nvflare/snapshot-storage"}}}},
                "components": [{"id": "job_manager", "args": {"uri_root": "/tmp/nvflare/jobs-storage"}}],
            }
        )
    )
    update_storage_locations(local_dir=str(tmp_path), workspace="/var/lib/flip")
    written = json.loads((tmp_path / "resources.json").read_text())
    assert written["components"][0]["args"]["uri_root"] == "/var/lib/flip/jobs-storage", changed(
        "update_storage_locations writes the job store elsewhere", fix
    )
    assert written["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] == "/var/lib/flip/snapshot-storage"


def test_the_kits_watchdog_runs_in_the_foreground():
    """39: a kit's ``startup/sub_start.sh`` (``sub_start_sh`` in master_template.yml) is NVFlare's watchdog: a loop in
    the foreground that restarts the FLARE process, stops on ``shutdown.fl`` and restarts on ``restart.fl`` (what the
    console's shutdown and restart write); ``start.sh`` runs it in the background."""
    import yaml
    from nvflare import lighter

    fix = "flip/ops/service.py (unit_text: ExecStart=<kit>/startup/sub_start.sh)"
    template = yaml.safe_load((Path(lighter.__file__).parent / "templates" / "master_template.yml").read_text())
    loop = template["sub_start_sh"]
    for needle in (
        'echo $BASHPID > "$WORKSPACE/daemon_pid.fl"',
        "while true",
        'if [[ -f "$WORKSPACE/shutdown.fl" ]]',
        'if [[ -f "$WORKSPACE/restart.fl" ]]',
    ):
        assert needle in loop, changed(f"sub_start.sh no longer has {needle!r}", fix)
    assert "$DIR/sub_start.sh &" in template["start_svr_sh"] and "$DIR/sub_start.sh &" in template["start_cln_sh"], (
        changed("start.sh no longer runs sub_start.sh in the background", fix)
    )


# -- 35-37. FLIP apps (issue 16) --------------------------------------------------------------------------------------


def test_sag_builds_each_rounds_task_from_train_task_name_after_round_started(tmp_path):
    """35: ``ScatterAndGather.control_flow`` fires ROUND_STARTED, then builds the round's task with
    ``name=self.train_task_name``; ``process_result_of_unknown_task`` compares a late result with it. flip's
    MultiStageScatterAndGather sets ``train_task_name`` at ROUND_STARTED, so each stage's rounds send its own task
    name (FLIP's diffusion apps: ``train_ae``, ``train_dm``)."""
    fix = "flip/nvflare/controllers/multi_stage.py (MultiStageScatterAndGather.handle_event at ROUND_STARTED)"
    in_order(ScatterAndGather.control_flow, ["AppEventType.ROUND_STARTED", "name=self.train_task_name"], fix)
    in_order(ScatterAndGather.process_result_of_unknown_task, ["task_name == self.train_task_name"], fix)

    names = []

    class Named(Communicator):
        def broadcast_and_wait(self, task, fl_ctx, *args, **kwargs):
            names.append(task.name)
            super().broadcast_and_wait(task, fl_ctx, *args, **kwargs)

    workflow = MultiStageScatterAndGather(
        stages=[
            {"name": "ae", "num_rounds": 2, "train_task_name": "train_ae"},
            {"name": "dm", "num_rounds": 1, "train_task_name": "train_dm"},
        ],
        min_clients=2,
        model_test_after_each_round=False,
    )
    components = {
        ComponentId.PERSISTOR: Persistor(),
        ComponentId.AGGREGATOR: SampleWeightedAggregator(min_accepted=2),
        ComponentId.SHAREABLE_GENERATOR: FullModelShareableGenerator(),
        "training": workflow,
    }
    engine = Engine(tmp_path, components)
    stage_tasks = {name: (lambda site, data: update(site, 0)) for name in ("train_ae", "train_dm")}
    workflow.set_communicator(Named(engine, update, answers=stage_tasks))
    fl_ctx = engine.new_context()
    workflow.initialize(fl_ctx)
    workflow.control_flow(Signal(), fl_ctx)
    assert names == ["train_ae", "train_ae", "train_dm"], changed(f"the rounds' tasks were named {names}", fix)
    assert engine.names().count(AppEventType.ROUND_DONE) == 3, changed("a stage's rounds did not complete", fix)


def test_persistor_and_generator_send_every_state_dict_entry(tmp_path):
    """36: ``PTFileModelPersistor`` keeps every ``state_dict`` entry of the model (BatchNorm's running statistics and
    its int64 ``num_batches_tracked``) as numpy arrays of their dtypes, and ``FullModelShareableGenerator`` sends
    them all as WEIGHTS; a WEIGHT_DIFF holding the int64 counter is added to it in int64. So a FLIP app's strict
    ``load_state_dict`` works at the site, and the averaged counter comes back."""
    fix = (
        "flip/methods/weighted.py (check_update, weighted_mean: integer entries) and the README (FLIP apps send "
        "every state_dict entry)"
    )
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    persistor = PTFileModelPersistor(model=model)
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.APP_ROOT, str(tmp_path), private=True, sticky=False)
    persistor.handle_event(EventType.START_RUN, fl_ctx)
    learnable = persistor.load(fl_ctx)
    sent = from_shareable(FullModelShareableGenerator().learnable_to_shareable(learnable, fl_ctx)).data
    assert sorted(sent) == sorted(model.state_dict()), changed(f"the persistor sends {sorted(sent)}", fix)
    assert sent["1.num_batches_tracked"].dtype == np.int64, changed(
        f"num_batches_tracked is sent as {sent['1.num_batches_tracked'].dtype}", fix
    )
    fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, learnable, private=True, sticky=False)
    diff = DXO(DataKind.WEIGHT_DIFF, data={"1.num_batches_tracked": np.array(3, np.int64)}).to_shareable()
    after = FullModelShareableGenerator().shareable_to_learnable(diff, fl_ctx)[ModelLearnableKey.WEIGHTS]
    assert int(after["1.num_batches_tracked"]) == 3 and after["1.num_batches_tracked"].dtype == np.int64, changed(
        "a WEIGHT_DIFF's int64 entry is no longer added in int64", fix
    )


def test_fed_event_reaches_the_server_with_the_senders_peer_props():
    """37: the server's ``FedEventRunner._receive`` reads the sender from the event Shareable's peer props
    (``get_peer_prop(IDENTITY_NAME, default)``) beside the origin header the site's runner stamps; flip's
    ServerEventHandler records a FLIP metric under the peer's name when the two differ."""
    from nvflare.widgets.fed_event import FedEventRunner

    fix = "flip/nvflare/components/server_event_handler.py (_flip_metric)"
    in_order(FedEventRunner._receive, ["request.get_peer_prop(ReservedKey.IDENTITY_NAME"], fix)
    in_order(
        FedEventRunner.handle_event, ["event_data.set_header(FedEventHeader.ORIGIN, fl_ctx.get_identity_name())"], fix
    )
    assert params(Shareable.get_peer_prop) == ["self", "key", "default"], changed(
        f"Shareable.get_peer_prop takes {params(Shareable.get_peer_prop)}", fix
    )


def test_simulator_server_inherits_the_callers_fobs_registry():
    """44: ``SimulatorRunner.run`` starts the server with ``multiprocessing.Process`` (forked: it keeps the caller's
    fobs registry); ``fobs.register`` keeps the first decomposer registered for a type; ``nvflare_fobs_initialize``
    registers NVFlare's; ``Packer.pack`` names the decomposer under ``FOBS_DECOMPOSER``."""
    from nvflare.fuel.utils.fobs import fobs
    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorRunner
    from nvflare.private.fed.utils.fed_utils import nvflare_fobs_initialize

    fix = "flip/simulate.py (prepare_serialization)"
    in_order(SimulatorRunner.run, ["process = Process(target=self.run_process", "process.start()"], fix)
    in_order(fobs.register, ["if name in _decomposers:", "return"], fix)
    in_order(fobs.Packer.pack, ["FOBS_DECOMPOSER: get_class_name(type(decomposer))"], fix)
    assert callable(nvflare_fobs_initialize), changed("nvflare_fobs_initialize is gone", fix)
