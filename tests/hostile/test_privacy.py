"""Hostile jobs at a site with its own differential-privacy policy: a job cannot turn DP off, raise ε, bring a
weaker policy, or send a number computed on the site's data around the filter (flip SitePrivacyPolicy).

Real NVFlare dispatcher, forwarder widget, DXOs and FLContexts; the site's engine is tests/unit/test_record_dp's."""

from __future__ import annotations

import re

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.private.fed.client.client_runner import ClientRunnerConfig
from nvflare.widgets.fed_event import ClientFedEventRunner

from flip.constants import ComponentId, FlipMeta
from flip.errors import TaskFailed
from flip.nvflare.components import ClientEventHandler, GaussianPrivacy, SitePrivacyPolicy
from flip.nvflare.metrics import send_metrics_value
from flip.privacy.ledger import ledger_path
from flip.provisioning import site_privacy_policy
from tests.unit.test_record_dp import SiteEngine, _ctx, _model, _raw_round, _send, _site

pytestmark = pytest.mark.unit


def test_a_job_cannot_replace_the_sites_policy_under_its_id():
    """privacy.json (as provisioning writes it) declares the policy with id flip_site_privacy; NVFlare adds it to
    every job's components and refuses a job that already has that id: the job does not start at the site."""
    policy = site_privacy_policy(differential_privacy={"target_epsilon": 8})
    assert policy["components"] == [
        {
            "id": ComponentId.SITE_PRIVACY,
            "path": "flip.nvflare.components.SitePrivacyPolicy",
            "args": {"target_epsilon": 8},
        }
    ]
    job = ClientRunnerConfig(
        task_router=None,
        task_data_filters={},
        task_result_filters={},
        handlers=[],
        components={ComponentId.SITE_PRIVACY: SitePrivacyPolicy(level="client", target_epsilon=100.0)},
    )
    with pytest.raises(ValueError, match=f"duplicate component id {ComponentId.SITE_PRIVACY}"):
        job.add_component(ComponentId.SITE_PRIVACY, SitePrivacyPolicy(target_epsilon=8.0))


def test_a_metric_the_job_sends_as_a_federated_event_stays_at_the_site(tmp_path):
    """FLIP's send_metrics_value fires a federated event with the value: NVFlare's forwarder (a widget, after every
    component, the site's policy included) must not send it. Before, the policy set the event's scope to local,
    which NVFlare's dispatcher resets for every handler: a demo run's hub still got each site's loss and accuracy."""
    sent = []

    class Forwarder(ClientFedEventRunner):
        def fire_and_forget_request(self, request, fl_ctx, targets=None, secure=False):
            sent.append(request)

    engine, policy = _site(tmp_path)
    ctx = _ctx(engine)
    engine.fire(EventType.START_RUN, ctx)
    engine.widgets.append(Forwarder())  # after START_RUN: it would register with the engine's messaging
    model = _model()
    with policy.training(ctx, "project-1", total_rounds=2) as task:
        _raw_round(ctx, model)
        task.ok = True
        send_metrics_value("accuracy", 0.8765, ctx)  # fires through the engine below
    assert sent == []
    # the same event at a site without a DP policy is forwarded (the test can fail)
    plain = SiteEngine(tmp_path / "site-2", {"client_event_handler": ClientEventHandler()})
    plain.widgets.append(Forwarder())
    plain_ctx = _ctx(plain)
    send_metrics_value("accuracy", 0.8765, plain_ctx)
    assert len(sent) == 1 and from_shareable(sent[0]).data["value"] == 0.8765


def test_a_job_cannot_bring_its_own_weaker_policy(tmp_path):
    """A job that declares its own SitePrivacyPolicy (DP off at client level, a higher ε) beside the site's is
    refused at its first training task; one that takes the site's id fails in NVFlare (duplicate component id)."""
    site_policy = SitePrivacyPolicy(target_epsilon=4.0)
    job_policy = SitePrivacyPolicy(level="client", target_epsilon=100.0)
    engine = SiteEngine(tmp_path / "site-1", {"job_dp": job_policy, ComponentId.SITE_PRIVACY: site_policy})
    ctx = _ctx(engine)
    engine.fire(EventType.START_RUN, ctx)
    with (
        pytest.raises(TaskFailed, match=r"the job declares its own SitePrivacyPolicy \('job_dp'\)"),
        site_policy.training(ctx, "project-1", total_rounds=2),
    ):
        pass
    with pytest.raises(TaskFailed, match="never by a job"), job_policy.training(ctx, "project-1", total_rounds=2):
        pass
    assert not ledger_path(tmp_path / "site-1").exists()  # nothing was admitted


@pytest.mark.parametrize(
    "job_filter, message",
    [
        (None, "the update did not pass GaussianPrivacy"),  # the job turned DP off
        (GaussianPrivacy(epsilon=50.0, rounds=2, seed=1), r"allows ε up to 50.0; this site allows at most 8"),
        (GaussianPrivacy(epsilon=8.0, rounds=2, delta=1e-3, seed=1), r"δ=0.001; this site allows at most 1e-05"),
    ],
)
def test_a_job_cannot_turn_client_level_dp_off_or_raise_epsilon(tmp_path, job_filter, message):
    engine, policy = _site(tmp_path, level="client", target_epsilon=8.0)
    ctx = _ctx(engine)
    engine.fire(EventType.START_RUN, ctx)
    with policy.training(ctx, "project-1", total_rounds=2):
        reply = DXO(DataKind.WEIGHT_DIFF, {"w": np.full(4, 0.1, np.float32)}).to_shareable()
    sent = _send(engine, ctx, reply, {"loss": 0.5}, job_filters=[job_filter] if job_filter else [])
    assert sent.get_return_code() == ReturnCode.EXECUTION_EXCEPTION and sent.get("DXO") is None
    assert re.search(message, sent.get_header(FlipMeta.ERROR_REASON))
