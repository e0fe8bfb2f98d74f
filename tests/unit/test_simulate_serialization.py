"""The simulator's server is forked from the calling process and inherits its fobs registry.

Seen in CI: a hostile test's helper round-tripped a Shareable through fobs before NVFlare had registered its
decomposers; every later simulator run in that pytest process sent tasks without a name or peer context (NVFlare:
``missing peer_ctx from client``) and ended STOPPED. ``prepare_serialization`` registers NVFlare's decomposers and
refuses to start from a process whose registry would drop a Shareable's headers.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.unit
def test_a_shareable_serialized_too_early_is_refused_naming_the_cause():
    done = _fresh_python("""
        from nvflare.apis.shareable import Shareable
        from nvflare.fuel.utils import fobs
        from flip.simulate import SerializationStateError, prepare_serialization

        early = Shareable()
        early.set_header("task_name", "train")
        fobs.loads(fobs.dumps(early))  # a helper's in-process round trip: a generic decomposer is registered for it
        try:
            prepare_serialization()
        except SerializationStateError as exc:
            print("refused:", exc)
    """)
    assert done.returncode == 0, done.stderr
    assert "refused: this process serialized an NVFlare Shareable before NVFlare registered" in done.stdout
    assert "DataClassDecomposer" in done.stdout  # the decomposer it would have used is named


@pytest.mark.unit
def test_after_preparation_a_shareable_keeps_its_headers_and_peer_context():
    done = _fresh_python("""
        from flip.simulate import prepare_serialization
        prepare_serialization()

        from nvflare.apis.fl_constant import ReservedKey
        from nvflare.apis.fl_context import FLContext
        from nvflare.apis.shareable import Shareable
        from nvflare.fuel.utils import fobs

        task = Shareable()
        task.set_header("task_name", "train")
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=False)
        task.set_peer_context(peer)
        back = fobs.loads(fobs.dumps(task))
        print(back.get_header("task_name"), back.get_peer_context().get_identity_name())
        prepare_serialization()  # idempotent
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["train", "site-1"]
