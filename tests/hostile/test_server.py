"""Hostile input on the server (issue 14): what one site sends cannot stop the run's end, poison its JSON, or move
the global model without bound; DP settings that would write Infinity are refused.

The server's components run as NVFlare runs them: real FLContext, Shareables and DXOs, events dispatched with
NVFlare's own ``fire_event_to_components`` (which, like the server, swallows an exception raised by a handler),
the dev platform on local files, and a real S3 server (``weed``) where a run ends with an upload.
"""

from __future__ import annotations

import json
import logging
import math
import re

import numpy as np
import pytest
import torch
from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor
from pydantic import SecretStr

from flip.constants import FlipEvent, FlipMeta, RunFile, RunStatus
from flip.errors import AggregationFailed, JSONValueError, NonFiniteModelError, PlatformError
from flip.files import write_json_atomic
from flip.methods import swag
from flip.methods.weighted import check_update, norm_outliers, weighted_mean
from flip.metrics import weighted_means
from flip.nvflare.components import GaussianPrivacy, SampleWeightedAggregator
from flip.nvflare.controllers import InitTraining
from flip.nvflare.controllers.training import FlipScatterAndGather
from flip.platform.dev import METRICS_FILE, LocalPlatform
from flip.platform.hub import HubPlatform
from tests.fakes import FakeEngine, Server
from tests.replicas.fixtures import running_hub

MODEL_ID = "7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
GLOBAL = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.5], np.float32)}


def strict_json(text: str):
    """Parse JSON as a strict reader does: NaN and Infinity are errors."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def uploaded(weed, key: str) -> bytes:
    return weed._client().get_object(Bucket=weed.bucket, Key=key)["Body"].read()


def objects_of_model(weed, model_id: str) -> list[str]:
    listing = weed._client().list_objects_v2(Bucket=weed.bucket, Prefix=f"{model_id}/")
    return [o["Key"] for o in listing.get("Contents", [])]


def warnings_naming(caplog, *words: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and all(w in r.getMessage() for w in words)
    ]


GOOD_PRIVACY = [
    {
        "filter": "PercentilePrivacy",
        "percentile": 10,
        "gamma": 0.01,
        "parts": {"update": {"shared": 0.9, "clipped": 0.05}},
    }
]


# -- item 8: a site's bad metadata never stops the end of the run --------------------------------------------------


@pytest.mark.s3
def test_bad_privacy_annotation_is_dropped_and_run_finishes(tmp_path, s3_env, caplog):
    """Old code kept ``["oops"]`` and the report's ``p.get`` raised AttributeError at END_RUN: NVFlare swallowed it,
    nothing was uploaded and the status stayed TRAINING_STARTED (final_status None)."""
    caplog.set_level(logging.INFO)
    server = Server(tmp_path)
    server.one_round({"site-1": {FlipMeta.PRIVACY: GOOD_PRIVACY}, "site-2": {FlipMeta.PRIVACY: ["oops"]}})
    server.fire(EventType.END_RUN)
    assert server.handler.final_status == RunStatus.RESULTS_UPLOADED
    assert [s["status"] for s in server.statuses()][-1] == "RESULTS_UPLOADED"
    metrics = strict_json(
        uploaded(
            s3_env, f"{server.handler.upload_key.removeprefix(f's3://{s3_env.bucket}/')}{RunFile.METRICS}"
        ).decode()
    )
    assert metrics["rounds"][0]["privacy"] == {"site-1": GOOD_PRIVACY, "site-2": []}
    assert warnings_naming(caplog, "site-2", "flip_privacy[0]")


@pytest.mark.s3
def test_numpy_stage_is_dropped(tmp_path, s3_env, caplog):
    """Old code stored the site's ``np.array('denoise')`` as the round's stage: json.dumps raised TypeError at
    ROUND_DONE and again at END_RUN (outside the caught errors), so metrics.json was never written, nothing was
    uploaded and the status stayed TRAINING_STARTED."""
    caplog.set_level(logging.INFO)
    server = Server(tmp_path)
    server.one_round({"site-1": {FlipMeta.STAGE: np.array("denoise")}, "site-2": {FlipMeta.STAGE: np.int64(2)}})
    assert "stage" not in server.metrics_json()["rounds"][0]
    assert warnings_naming(caplog, "site-1", "flip_stage") and warnings_naming(caplog, "site-2", "flip_stage")
    server.fire(EventType.END_RUN)
    assert server.handler.final_status == RunStatus.RESULTS_UPLOADED


@pytest.mark.unit
def test_a_plain_stage_and_good_annotations_are_kept(tmp_path):
    """The checks keep what a well-behaved site sends (a numpy string is a string)."""
    server = Server(tmp_path)
    server.one_round({"site-1": {FlipMeta.STAGE: np.str_("denoise"), FlipMeta.PRIVACY: GOOD_PRIVACY}})
    entry = server.metrics_json()["rounds"][0]
    assert entry["stage"] == "denoise" and entry["privacy"] == {"site-1": GOOD_PRIVACY}


@pytest.mark.unit
def test_raw_validation_values_dropped_per_site(tmp_path, caplog):
    """Old code stored whatever a site sent; NVFlare's writer turned arrays into strings and wrote NaN, so the
    results JSON held '[[1. 0.] [0. 1.]]' and NaN (not JSON) and later broke the report."""
    caplog.set_level(logging.INFO)
    server = Server(tmp_path)
    server.fire(EventType.START_RUN)
    model = RunFile.SERVER_MODEL
    results = {
        "site-1": DXO(
            DataKind.METRICS,
            data={"accuracy": 0.9, "confusion": np.eye(2), "note": "x", "nested": {"a": 1}, "loss": float("nan")},
        ),
        "site-2": DXO(DataKind.WEIGHTS, data={"w": np.zeros(2)}),
        "site-3": DXO(DataKind.METRICS, data={"accuracy": np.float32(0.75), "n": np.int64(4)}),
        "site-4": DXO(DataKind.METRICS, data={}),
    }
    results["site-4"].data = ["not", "a", "dict"]  # what a site can put on the wire (DXO() itself refuses it)
    for site, dxo in results.items():
        server.fire(
            AppEventType.VALIDATION_RESULT_RECEIVED,
            **{
                AppConstants.MODEL_OWNER: model,
                AppConstants.DATA_CLIENT: site,
                AppConstants.VALIDATION_RESULT: dxo.to_shareable(),
            },
        )
    path = server.json.write_results(server.ctx)
    # issue 16: numbers nested in dicts and lists are kept with their shape (FLIP's validators send them)
    assert strict_json(path.read_text()) == {
        "site-1": {model: {"accuracy": 0.9, "nested": {"a": 1}}},
        "site-3": {model: {"accuracy": 0.75, "n": 4}},
    }
    for site, word in (
        ("site-1", "'confusion'"),
        ("site-1", "'note'"),
        ("site-1", "'loss'"),
        ("site-2", "WEIGHTS"),
        ("site-4", "not a DXO"),
    ):
        assert warnings_naming(caplog, site, word), (site, word)


@pytest.mark.unit
def test_bad_site_metrics_are_dropped_per_metric(tmp_path, caplog):
    """Old code dropped all of a site's metrics for one bad entry, and a huge int metric (10**400) raised
    OverflowError in math.isfinite inside the handler, recording nothing."""
    caplog.set_level(logging.INFO)
    server = Server(tmp_path)
    server.fire(EventType.START_RUN)
    server.fire(AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: 0, AppConstants.NUM_ROUNDS: 1})
    server.contribution("site-1", 0, {"num_samples": 10, "accuracy": 0.8, "huge": 10**400, "raw": np.zeros(3)})
    server.fire(AppEventType.ROUND_DONE, **{AppConstants.CURRENT_ROUND: 0})
    assert server.metrics_json()["rounds"][0]["sites"] == {"site-1": {"num_samples": 10, "accuracy": 0.8}}
    assert warnings_naming(caplog, "site-1", "'huge'") and warnings_naming(caplog, "site-1", "'raw'")


@pytest.mark.unit
def test_site_error_reason_and_name_are_checked(tmp_path, caplog):
    """A site's error event cannot claim another site's name or carry an array as its reason (old code took the
    name from the message and printed the array into the reason sent to the hub)."""
    caplog.set_level(logging.INFO)
    server = Server(tmp_path)
    server.fire(EventType.START_RUN)
    message = Shareable()
    message.set_header(FlipMeta.SITE_NAME, "site-2")
    message.set_header(FlipMeta.ERROR_REASON, np.arange(5))
    server.fire(FlipEvent.SITE_ERROR, "site-1", **{FLContextKey.EVENT_DATA: message})
    assert server.handler.site_errors == {"site-1": "error"}
    assert warnings_naming(caplog, "site-1", "flip_error_reason")


class AnsweredInitTraining(InitTraining):
    """InitTraining whose task the given sites answered (NVFlare's task delivery needs real sites)."""

    def __init__(self, answers: dict):
        super().__init__(min_clients=2)
        self.answers = answers

    def broadcast_and_wait(self, task, fl_ctx, **kwargs):
        for site, result in self.answers.items():
            client_task = ClientTask(Client(site, None), task)
            client_task.result = result
            task.client_tasks.append(client_task)


@pytest.mark.unit
def test_init_training_failure_reason_is_checked(tmp_path, caplog):
    """Old code evaluated ``reason or rc`` on the site's header: an array as reason raised ValueError ('truth value
    of an array is ambiguous') in the workflow instead of failing the run naming the site."""
    caplog.set_level(logging.INFO)
    server = Server(tmp_path)
    server.fire(EventType.START_RUN)
    failed = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    failed.set_header(FlipMeta.ERROR_REASON, np.arange(3))
    ok = Shareable()
    AnsweredInitTraining({"site-1": ok, "site-2": failed}).control_flow(Signal(), server.ctx)
    assert server.handler.fatal_error
    assert "only 1 of 2 required sites are ready (site-2: EXECUTION_EXCEPTION)" in server.handler.error_reason
    assert warnings_naming(caplog, "site-2", "flip_error_reason")


def _fail_savefig(*args, **kwargs):
    raise KeyError("a plotting library's surprise")


@pytest.mark.s3
@pytest.mark.parametrize("fault, final", [("report", RunStatus.RESULTS_UPLOADED), ("metrics", RunStatus.ERROR)])
def test_end_run_always_reaches_final_status(tmp_path, s3_env, monkeypatch, fault, final):
    """Old code caught only (OSError, ValueError, RuntimeError) from the report and (FlipError, OSError, ValueError)
    around the upload: a KeyError from matplotlib, or a value json cannot write (TypeError), escaped END_RUN, NVFlare
    swallowed it, and the status never became final (final_status None, no upload, no pending record)."""
    server = Server(tmp_path)
    server.one_round({"site-1": {}, "site-2": {}})
    if fault == "report":  # a third-party failure: matplotlib's savefig raises something unexpected
        import matplotlib.figure

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _fail_savefig)
    else:  # a value that cannot be written as JSON reaches the metrics document (a bug upstream)
        server.handler.metrics.rounds[0]["server"] = {"step": object()}
    server.fire(EventType.END_RUN)
    assert server.handler.final_status == final
    statuses = server.statuses()
    assert statuses[-1]["status"] == final.value
    if final == RunStatus.RESULTS_UPLOADED:
        keys = objects_of_model(s3_env, server.model_id)
        assert any(k.endswith(RunFile.METRICS) for k in keys) and not any("/report/" in k for k in keys)
    else:
        assert "cannot write JSON" in statuses[-1]["reason"]


# -- item 9: one site cannot move the global model without bound ---------------------------------------------------


def _ctx(tmp_path, site, round_num=0, global_weights=GLOBAL):
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, FakeEngine(tmp_path, "server"), private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    ctx.set_peer_context(peer)
    ctx.set_prop(AppConstants.CURRENT_ROUND, round_num, private=True)
    ctx.set_prop(AppConstants.NUM_ROUNDS, 3, private=True)
    ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(global_weights, {}), private=True)
    return ctx


def _update(diff, samples=10, round_num=0):
    shareable = DXO(DataKind.WEIGHT_DIFF, data=diff, meta={FlipMeta.NUM_SAMPLES: samples}).to_shareable()
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_num)
    return shareable


def _diff(value, dtype=np.float32):
    return {"w": np.array([value, -value], dtype), "b": np.array([value], dtype)}


@pytest.mark.unit
def test_huge_update_excluded(tmp_path):
    """Old code averaged an update of 3e38 (finite float32) in: the global update became 1e38-sized (and Inf once
    added to the weights, or with a claimed num_samples of 2**62). Now, decided once all updates are in, an update
    more than 10x the round's median norm is excluded and the average is the honest sites'."""
    aggregator = SampleWeightedAggregator(min_accepted=2)
    aggregator.reset(None)
    for site, diff in (("site-1", _diff(0.1)), ("site-2", _diff(0.3)), ("site-3", _diff(3e38))):
        assert aggregator.accept(_update(diff), _ctx(tmp_path, site))
    mean = from_shareable(aggregator.aggregate(_ctx(tmp_path, "site-1"))).data
    np.testing.assert_allclose(mean["w"], [0.2, -0.2], rtol=1e-6)
    assert aggregator.excluded["site-3"].startswith("its update norm 5.2e+38 is more than 10 times the round's median")
    assert sorted(aggregator.accepted) == ["site-1", "site-2"]
    assert not (tmp_path / "job-1" / RunFile.LOCAL_MODELS_DIR / "round_1" / "site-3.pt").exists()


@pytest.mark.unit
def test_two_sites_need_the_absolute_norm_cap(tmp_path):
    """With two updates the median rule cannot tell which one is the outlier (documented); max_update_norm can."""
    assert norm_outliers({"site-1": 0.1, "site-2": 1e30}) == {}
    aggregator = SampleWeightedAggregator(max_update_norm=100.0)
    aggregator.reset(None)
    assert aggregator.accept(_update(_diff(0.1)), _ctx(tmp_path, "site-1"))
    assert not aggregator.accept(_update(_diff(3e38)), _ctx(tmp_path, "site-2"))
    assert aggregator.excluded["site-2"].startswith("its update norm 5.2e+38 is more than max_update_norm (100)")


@pytest.mark.unit
def test_num_samples_cap(tmp_path):
    """Old code accepted any positive num_samples: a site claiming 2**62 samples outweighed every other site."""
    aggregator = SampleWeightedAggregator()
    aggregator.reset(None)
    assert not aggregator.accept(_update(_diff(0.1), samples=2**62), _ctx(tmp_path, "site-1"))
    assert aggregator.excluded == {"site-1": f"num_samples {2**62} is more than max_num_samples (10000000)"}
    capped = SampleWeightedAggregator(max_num_samples=100)
    capped.reset(None)
    assert capped.accept(_update(_diff(0.1), samples=100), _ctx(tmp_path, "site-1"))
    assert not capped.accept(_update(_diff(0.1), samples=101), _ctx(tmp_path, "site-2"))
    reason = check_update(_diff(0.1), GLOBAL, 10_000_001)
    assert reason == "num_samples 10000001 is more than max_num_samples (10000000)"


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_num_samples": 0}, "max_num_samples must be an integer >= 1, got 0"),
        ({"max_update_norm": float("nan")}, "max_update_norm must be a finite number > 0 or None, got nan"),
        ({"max_update_norm": 0}, "max_update_norm must be a finite number > 0 or None, got 0"),
        ({"norm_ratio_limit": 0.5}, "norm_ratio_limit must be a finite number >= 1 or None, got 0.5"),
    ],
)
def test_aggregator_limits_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SampleWeightedAggregator(**kwargs)


@pytest.mark.unit
def test_aggregate_overflow_to_inf_is_refused(tmp_path):
    """Old weighted_mean cast each mean to the first contribution's dtype without a check: float16 then float32
    updates gave an Inf global update silently."""
    with pytest.raises(NonFiniteModelError, match="the weighted mean: entry 'w'"):
        weighted_mean([({"w": np.array([1.0], np.float32)}, 1), ({"w": np.array([1e300])}, 1)])
    with pytest.raises(NonFiniteModelError, match="entry 'w'"):  # float64 itself overflows
        weighted_mean([({"w": np.array([1e308])}, 10), ({"w": np.array([1e308])}, 10)])
    aggregator = SampleWeightedAggregator(norm_ratio_limit=None)
    aggregator.reset(None)
    assert aggregator.accept(_update({"w": np.array([1.0, 1.0], np.float16)}), _ctx(tmp_path, "site-1"))
    assert aggregator.accept(_update({"w": np.array([3e5, 3e5], np.float32)}), _ctx(tmp_path, "site-2"))
    with pytest.raises(AggregationFailed, match="round 1: the weighted mean: entry 'w' holds NaN or Inf"):
        aggregator.aggregate(_ctx(tmp_path, "site-1"))


@pytest.mark.unit
def test_update_that_overflows_the_local_model_is_excluded(tmp_path):
    """A finite float64 update whose sum with the float32 global model is Inf is excluded at arrival."""
    aggregator = SampleWeightedAggregator()
    aggregator.reset(None)
    assert not aggregator.accept(_update({"w": np.array([1e300, 0.0])}), _ctx(tmp_path, "site-1"))
    assert "its local model (the model it started from plus its update): entry 'w'" in aggregator.excluded["site-1"]


@pytest.mark.unit
def test_swag_non_finite_moments_are_refused():
    """SWAG aggregates separately: a mean or variance that overflows the model's dtype is refused, not saved."""
    with pytest.raises(NonFiniteModelError, match="SWAG"):
        swag.aggregate(GLOBAL, [(_diff(1e30, np.float64), _diff(1e300, np.float64), 10)])
    assert norm_outliers({"site-1": 1.0, "site-2": 1.1, "site-3": 1e6}).keys() == {"site-3"}


@pytest.mark.unit
def test_global_model_overflow_panics_before_it_is_saved(tmp_path):
    """ScatterAndGather adds the averaged update to the global model (a FedOpt step scales it): an overflow there
    now fires FATAL_SYSTEM_ERROR at AFTER_SHAREABLE_TO_LEARNABLE, so the run ends in ERROR before the save."""
    server = Server(tmp_path)
    workflow = FlipScatterAndGather()
    server.engine.components["training"] = workflow
    server.fire(EventType.START_RUN)
    bad = make_model_learnable({"w": np.array([np.inf, 1.0], np.float32)}, {})
    server.fire(
        AppEventType.AFTER_SHAREABLE_TO_LEARNABLE, **{AppConstants.GLOBAL_MODEL: bad, AppConstants.CURRENT_ROUND: 1}
    )
    assert server.handler.fatal_error
    assert "round 2: the new global model: entry 'w' holds NaN or Inf" in server.handler.error_reason


@pytest.mark.s3
def test_non_finite_global_model_never_uploaded(tmp_path, s3_env):
    """Old code uploaded whatever the persistor saved, Inf included, and reported RESULTS_UPLOADED."""
    persistor = PTFileModelPersistor(model=torch.nn.Linear(2, 1))
    server = Server(tmp_path, persistor=persistor)
    server.one_round({"site-1": {}})
    learnable = persistor.load(server.ctx)
    weights = {k: np.asarray(v) for k, v in learnable["weights"].items()}
    weights["weight"] = np.array([[np.inf, 0.0]], np.float32)
    persistor.save(make_model_learnable(weights, {}), server.ctx)
    server.fire(EventType.END_RUN)
    assert server.handler.final_status == RunStatus.ERROR
    reason = server.statuses()[-1]["reason"]
    assert "global_model.pt: entry 'weight' holds NaN or Inf" in reason
    assert objects_of_model(s3_env, server.model_id) == []
    assert not (server.run_dir / RunFile.UPLOAD_PENDING).exists()


# -- item 10: no Infinity in JSON ----------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("noise_multiplier", [1e-300, 1e300])
def test_gaussian_privacy_refuses_infinite_epsilon(noise_multiplier):
    """Old code accepted noise_multiplier=1e-300: ε was inf and reached metrics.jsonl and the hub as Infinity."""
    with pytest.raises(ValueError, match=re.escape(f"noise_multiplier {noise_multiplier!r} ")):
        GaussianPrivacy(noise_multiplier=noise_multiplier)


@pytest.mark.unit
def test_gaussian_privacy_unachievable_epsilon_named():
    """Old code raised dp_accounting's 'brentq raised ValueError ... did not bracket a solution', naming no
    argument."""
    with pytest.raises(
        ValueError,
        match=r"epsilon=1000000000.0 over rounds=1 at delta=1e-05 cannot be reached: "
        r"with noise multipliers in \[0.001, 10000\] the achievable epsilon is "
        r"between 0.0035\d* and 5.5e\+05",
    ):
        GaussianPrivacy(epsilon=1e9, rounds=1)


@pytest.mark.http  # the hub replica serves on 127.0.0.1
def test_json_writers_refuse_nan(tmp_path):
    """Old writers used json.dumps' default allow_nan=True and wrote NaN/Infinity, which strict readers reject."""
    path = tmp_path / "doc.json"
    with pytest.raises(JSONValueError, match=r"rounds\[0\].global.loss is NaN or Infinity"):
        write_json_atomic(path, {"rounds": [{"global": {"loss": float("inf")}}]})
    assert not path.exists() and not (tmp_path / "doc.json.tmp").exists()

    platform = LocalPlatform(tmp_path / "flip")
    with pytest.raises(PlatformError, match=r"not recorded in metrics.jsonl: .*metrics.dp_epsilon is NaN"):
        platform.report_metrics(MODEL_ID, "job-1", 1, "site-1", {"dp_epsilon": float("inf")})
    assert not (tmp_path / "flip" / METRICS_FILE).exists()

    with running_hub(tmp_path / "hub", key="k", model_id=MODEL_ID) as hub:
        prod = HubPlatform(hub.url, SecretStr("k"), tmp_path / "prod", timeout=1.0, backoff=0.01)
        with pytest.raises(PlatformError, match=r"not sent to the hub .*metrics.accuracy is NaN or Infinity"):
            prod.report_metrics(MODEL_ID, "job-1", 1, "site-1", {"accuracy": float("nan")})
        assert hub.replica.requests() == []


@pytest.mark.unit
def test_mean_of_huge_metrics_stays_finite():
    """Old weighted_means multiplied before dividing: two finite 1e308 accuracies gave inf in metrics.json."""
    means = weighted_means({"site-1": {"num_samples": 10, "x": 1e308}, "site-2": {"num_samples": 10, "x": 1e308}})
    assert math.isfinite(means["x"]) and means["num_samples"] == 20
