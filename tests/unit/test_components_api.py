"""The public API of flip.nvflare.components (SPEC.md §1): names, bases, constructor defaults, attributes."""

from __future__ import annotations

import inspect

import pytest
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.executor import Executor
from nvflare.apis.fl_component import FLComponent
from nvflare.app_common.abstract.model_locator import ModelLocator

import flip.nvflare.components as components
import flip.nvflare.controllers as controllers
import flip.nvflare.executors as executors

pytestmark = pytest.mark.unit

MODEL_ID = "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90"
EMPTY = inspect.Parameter.empty

SPEC = {
    "CleanupImages": (Executor, {}),
    "PercentilePrivacy": (DXOFilter, {"percentile": 10, "gamma": 0.01, "data_kinds": None, "off": False}),
    "ValidationJsonGenerator": (
        FLComponent,
        {"results_dir": "cross_site_val", "json_file_name": "cross_val_results.json"},
    ),
    "ClientEventHandler": (FLComponent, {}),
    "ServerEventHandler": (
        FLComponent,
        {
            "model_id": "",
            "validation_json_generator_id": "json_generator",
            "persist_and_cleanup_id": "persist_and_cleanup",
            "flip": None,
        },
    ),
    "PersistToS3AndCleanup": (FLComponent, {"model_id": EMPTY, "persistor_id": "persistor", "flip": None}),
    "PTModelLocator": (ModelLocator, {"exclude_vars": None, "model": None}),
}
#: keyword arguments flip adds after SPEC's, with defaults that keep SPEC's behaviour
EXTRA = {
    "PercentilePrivacy": {"site_policy": False, "defer_to_site": False},
}


def test_all_is_sorted_and_exported():
    assert components.__all__ == sorted(components.__all__)
    assert set(SPEC) <= set(components.__all__)
    for name in components.__all__:
        assert getattr(components, name).__name__ == name


@pytest.mark.parametrize("package", [components, controllers, executors])
def test_public_packages_export_a_sorted_all(package):
    assert package.__all__ == sorted(package.__all__)
    for name in package.__all__:
        assert getattr(package, name).__name__ == name


def test_cleanup_images_is_an_executor_also_named_from_components():
    """CleanupImages lives with the executors; SPEC.md and FLIP's configs name flip.nvflare.components.CleanupImages."""
    assert executors.CleanupImages is components.CleanupImages
    assert executors.CleanupImages.__module__ == "flip.nvflare.executors.cleanup_images"


@pytest.mark.parametrize("name", ["SampleWeightedAggregator", "FedOptShareableGenerator", "UncertaintyPlan"])
def test_components_a_job_names_live_in_components(name):
    assert getattr(components, name).__module__.startswith("flip.nvflare.components.")


@pytest.mark.parametrize("name", sorted(SPEC))
def test_constructor_signature_and_base(name):
    base, expected = SPEC[name]
    cls = getattr(components, name)
    assert issubclass(cls, base)
    params = inspect.signature(cls.__init__).parameters
    expected = {**expected, **EXTRA.get(name, {})}
    assert [p for p in params if p != "self"] == list(expected)
    for arg, default in expected.items():
        assert params[arg].default == default, f"{name}({arg}=...) default"


def test_server_event_handler_attributes():
    handler = components.ServerEventHandler(model_id=MODEL_ID)
    assert handler.model_id == MODEL_ID
    assert handler.validation_json_generator_id == "json_generator" and handler.validation_json_generator is None
    assert handler.persist_and_cleanup_id == "persist_and_cleanup" and handler.persist_and_cleanup is None
    assert handler.flip is None and handler.fatal_error is False and handler.final_status is None


def test_persist_attributes_and_methods():
    persist = components.PersistToS3AndCleanup(model_id=MODEL_ID)
    assert (
        persist.model_id,
        persist.persistor_id,
        persist.model_persistor,
        persist.model_inventory,
        persist.model_dir,
        persist.bucket_name,
        persist.flip,
    ) == (MODEL_ID, "persistor", None, {}, "", "", None)
    for method in ("execute", "upload_results_to_s3_bucket", "cleanup"):  # SPEC: method(fl_ctx); the rest optional
        params = list(inspect.signature(getattr(persist, method)).parameters.values())
        assert params[0].name == "fl_ctx"
        assert all(p.kind == p.KEYWORD_ONLY and p.default is None for p in params[1:])


@pytest.mark.parametrize("bad", ["", "not-a-uuid", "1234", None, 42])
def test_model_id_must_be_a_uuid(bad):
    for cls in (components.ServerEventHandler, components.PersistToS3AndCleanup):
        with pytest.raises(ValueError, match="model_id must be a UUID"):
            cls(model_id=bad)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"percentile": -1}, r"percentile must be a finite number in \[0, 100\], got -1"),
        ({"percentile": 100.5}, r"percentile must be a finite number in \[0, 100\], got 100.5"),
        ({"percentile": float("nan")}, r"percentile must be a finite number in \[0, 100\], got nan"),
        ({"percentile": "10"}, r"percentile must be a finite number in \[0, 100\], got '10'"),
        ({"gamma": 0}, r"gamma must be a finite number > 0, got 0"),
        ({"gamma": -0.5}, r"gamma must be a finite number > 0, got -0.5"),
        ({"gamma": float("inf")}, r"gamma must be a finite number > 0, got inf"),
        ({"data_kinds": ["WEIGHTS"]}, r"data_kinds must be a non-empty list of \['WEIGHT_DIFF'\]"),
        ({"data_kinds": ["METRICS"]}, r"data_kinds must be a non-empty list"),
        ({"off": "yes"}, r"off must be True or False, got 'yes'"),
    ],
)
def test_percentile_privacy_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        components.PercentilePrivacy(**kwargs)


def test_validation_json_generator_rejects_escaping_paths():
    with pytest.raises(ValueError, match="results_dir must be a relative path"):
        components.ValidationJsonGenerator(results_dir="../outside")
    with pytest.raises(ValueError, match="json_file_name must be a relative path .* ending in '.json'"):
        components.ValidationJsonGenerator(json_file_name="results.txt")


def test_model_locator_rejects_bad_regex():
    with pytest.raises(ValueError, match="exclude_vars must be a regular expression"):
        components.PTModelLocator(exclude_vars="(")
