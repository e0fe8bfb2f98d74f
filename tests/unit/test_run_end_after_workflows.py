"""A run whose workflows all ended is uploaded even if an abort comes while the server waits to end it.

NVFlare's simulator aborts the server once every site has finished; the server may still be in
CHECK_END_RUN_READINESS then, waiting for the sites' last federated events (a FLIP app's ``send_metrics_value``
during the final validation). Before the fix, ServerEventHandler saw the abort at END_RUN and ended the completed
run in STOPPED with nothing uploaded (tests/integration/test_flip_apps.py met it: the dicom app's validator sends
its test metrics last). An abort during the workflows still ends the run in STOPPED.
"""

from __future__ import annotations

import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.signal import Signal

from flip.constants import RunStatus
from tests.hostile.test_server import Server, objects_of_model

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_env(weed, monkeypatch):
    for key, value in weed.env.items():
        monkeypatch.setenv(key, value)
    return weed


def _aborted() -> Signal:
    signal = Signal()
    signal.trigger(True)
    return signal


def test_an_abort_after_the_workflows_ended_keeps_the_completed_run(tmp_path, s3_env):
    server = Server(tmp_path)
    server.fire(EventType.START_RUN, **{ReservedKey.RUN_ABORT_SIGNAL: Signal()})
    server.one_round({"site-1": {}, "site-2": {}})
    server.fire(EventType.ABOUT_TO_END_RUN)
    server.fire(EventType.END_RUN, **{ReservedKey.RUN_ABORT_SIGNAL: _aborted()})
    assert server.handler.final_status == RunStatus.RESULTS_UPLOADED
    assert objects_of_model(s3_env, server.model_id)


def test_an_abort_during_the_workflows_still_stops_the_run(tmp_path, s3_env):
    server = Server(tmp_path)
    server.one_round({"site-1": {}, "site-2": {}})
    server.fire(EventType.ABOUT_TO_END_RUN, **{ReservedKey.RUN_ABORT_SIGNAL: _aborted()})
    server.fire(EventType.END_RUN)
    assert server.handler.final_status == RunStatus.STOPPED
    assert objects_of_model(s3_env, server.model_id) == []
