"""Hostile inputs to FLIP's app API (issue 16): accession ids, per-site data, NET_ID, the current site, metrics events.

Before issue 16 flip had none of these entry points (``FLIP().get_by_accession_number``, ``FLIP_SITE_DATA``,
``NET_ID``, ``send_metrics_value``), so every test here failed on the old code (AttributeError / ImportError); the
docstrings say what FLIP's own code does with the same input, which is what these refusals guard against.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import FedEventHeader, ReservedKey
from nvflare.apis.fl_context import FLContext

from flip import FLIP
from flip.constants import ResourceType
from flip.errors import SettingsError
from flip.nvflare.metrics import MetricDropped, parse_metric_event, send_metrics_value
from flip.platform.site import set_current_site, site_context
from flip.settings import load_settings

pytestmark = pytest.mark.unit

UNSAFE_ACCESSION_IDS = [
    "../x",
    "/etc",
    "",
    ".",
    "..",
    "a/b",
    "x/../../y",
    "a\n",
    "a\r",
    "\x00",
    "acc\t1",
    "~root",
    "-rf",
    "a" * 129,
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in ("LOCAL_DEV", "FLIP_ENV", "DEV_DATAFRAME", "DEV_IMAGES_DIR", "FLIP_SITE_DATA", "NET_ID"):
        monkeypatch.setenv(var, "")  # recorded, so whatever a test sets is undone
        monkeypatch.delenv(var)
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "flip-local"))
    set_current_site(None)
    yield
    set_current_site(None)


@pytest.fixture
def images(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "sandbox" / "images"
    root.mkdir(parents=True)
    monkeypatch.setenv("DEV_IMAGES_DIR", str(root))
    return root


@pytest.mark.parametrize("accession_id", UNSAFE_ACCESSION_IDS)
def test_unsafe_accession_id_is_refused_and_creates_nothing(images, accession_id):
    """FLIP's dev platform returns ``Path(DEV_IMAGES_DIR) / accession_id`` and creates it if missing: ``../x``
    makes a folder beside the image root, ``/etc`` hands the app /etc. Here: ValueError naming the value."""
    before = sorted(p for p in images.parent.parent.rglob("*"))
    with pytest.raises(ValueError) as err:
        FLIP().get_by_accession_number("p", accession_id, [ResourceType.DICOM])
    assert repr(accession_id) in str(err.value) and "an accession id names one folder" in str(err.value)
    assert sorted(p for p in images.parent.parent.rglob("*")) == before


@pytest.mark.parametrize("accession_id", [12345, None, b"acc", Path("acc"), ["acc"], 1.5])
def test_non_str_accession_id_is_a_type_error(images, accession_id):
    """FLIP's dev platform joins whatever it gets into a path (a ``Path`` passes, an int fails deep in pathlib);
    FLIP's check_accession_id says TypeError: so do we, for both platforms."""
    with pytest.raises(TypeError, match="accession_id must be a str"):
        FLIP().get_by_accession_number("p", accession_id)


@pytest.mark.parametrize("accession_id", ["../x", "/etc", "a\n"])
def test_prod_refuses_unsafe_accession_ids_before_any_call(monkeypatch, accession_id):
    """The id names the folder the imaging API fills: prod applies the same one rule before calling it."""
    monkeypatch.setenv("LOCAL_DEV", "false")
    with pytest.raises(ValueError, match="an accession id names one folder"):
        FLIP().get_by_accession_number("p", accession_id)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "must be a JSON object, got text that is not JSON"),
        ('["site-1"]', "must be a JSON object of sites, got list"),
        ('{"../x": {"dataframe": "/a.csv", "images": "/i"}}', "site name '../x' is invalid"),
        ('{"site-1\\n": {"dataframe": "/a.csv", "images": "/i"}}', "site name 'site-1\\\\n' is invalid"),
        ('{"site-1": {"dataframe": "a.csv", "images": "/i"}}', r"\['site-1'\]\['dataframe'\] must be an absolute path"),
        ('{"site-1": {"dataframe": "/a.csv", "images": "../i"}}', r"\['images'\] must be an absolute path"),
        ('{"site-1": {"dataframe": "/a.csv\\n", "images": "/i"}}', "must not contain control characters"),
        ('{"site-1": {"dataframe": 3, "images": "/i"}}', "must be a string"),
        ('{"site-1": {"dataframe": "/a.csv"}}', "exactly the keys \\['dataframe', 'images'\\]"),
        ('{"site-1": {"dataframe": "/a.csv", "images": "/i", "cmd": "rm"}}', "exactly the keys"),
        ('{"site-1": "/a.csv:/i"}', "exactly the keys"),
    ],
)
def test_hostile_site_data_is_refused_naming_the_variable(monkeypatch, value, message):
    """FLIP_SITE_DATA comes from the environment: a relative path would move with the simulator's working folder,
    a site name with '/' or a newline would not name one site."""
    monkeypatch.setenv("FLIP_SITE_DATA", value)
    with pytest.raises(SettingsError, match="FLIP_SITE_DATA") as err:
        load_settings()
    assert err.match(message)


@pytest.mark.parametrize("net_id", ["../x", "a/b", "net\n", "", "."])
def test_hostile_net_id_is_refused(monkeypatch, net_id):
    """FLIP joins NET_ID into the imaging URL and the folder its cleanup empties (``<IMAGES_DIR>/<NET_ID>``)."""
    monkeypatch.setenv("NET_ID", net_id)
    with pytest.raises(SettingsError, match="NET_ID"):
        load_settings()


@pytest.mark.parametrize("site", ["../site-1", "site-1\n", "", 3])
def test_current_site_must_be_a_site_name(site):
    """The current site picks a FLIP_SITE_DATA entry: only a safe site name may be set."""
    with pytest.raises(ValueError, match="site name"):
        set_current_site(site)
    with pytest.raises(ValueError, match="site name"), site_context(site):
        pass


def test_a_site_without_an_entry_never_reads_another_sites_data(tmp_path, monkeypatch):
    """site-2 has no entry and no DEV_* is set: it gets an error naming it, never site-1's cohort."""
    (tmp_path / "s1.csv").write_text("accession_id\nS1\n")
    (tmp_path / "s1").mkdir()
    monkeypatch.setenv(
        "FLIP_SITE_DATA",
        json.dumps({"site-1": {"dataframe": str(tmp_path / "s1.csv"), "images": str(tmp_path / "s1")}}),
    )
    with site_context("site-2"), pytest.raises(Exception, match="site 'site-2'"):
        FLIP().get_dataframe("p", "q")


class _Engine:
    def __init__(self):
        self.fired = []

    def fire_event(self, event_type, fl_ctx):
        self.fired.append(event_type)


@pytest.mark.parametrize("value", [np.ones(1000), [0.1] * 10, {"w": np.ones(3)}, "0.5", b"\x00", None])
def test_a_metric_cannot_carry_arrays_or_text_off_a_site(value):
    """An event is not privacy-filtered like a task result: FLIP puts any value in it; we send only a number."""
    engine = _Engine()
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    send_metrics_value("loss", value, fl_ctx)
    assert engine.fired == []


@pytest.mark.parametrize(
    "data",
    [
        {"label": "loss", "value": 0.5, "weights": np.ones(10)},
        {"label": "loss", "value": np.ones(10)},
        {"label": "x" * 10_000, "value": 0.5},
        {"label": "loss\nERROR forged log line", "value": 0.5},
        {"label": "loss", "value": float("nan")},
        {"label": "loss", "value": 10**400},
    ],
)
def test_the_server_drops_a_hostile_metrics_event(data):
    """A site (or an old client) may send anything in a ``_send_result`` event: the server takes named finite
    numbers only and says why it dropped the rest, naming the site."""
    event = DXO(data_kind=DataKind.METRICS, data=data).to_shareable()
    event.set_header(FedEventHeader.ORIGIN, "site-1")
    with pytest.raises(MetricDropped, match="a metric from site 'site-1' dropped"):
        parse_metric_event(event)
