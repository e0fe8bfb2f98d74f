"""flip's errors live in flip/errors.py and derive from FlipError, so a caller can catch all of flip's on purpose."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import flip
from flip.errors import FlipError

#: errors the storage split moves on its own (another change): allowed where they are, still FlipErrors
_ELSEWHERE = ("flip.storage.",)


def _flip_modules():
    for info in pkgutil.walk_packages(flip.__path__, "flip."):
        yield importlib.import_module(info.name)


def _exceptions_defined_in(module):
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == module.__name__
    ]


@pytest.mark.unit
def test_every_error_of_flip_is_a_flip_error_defined_in_flip_errors():
    found = {}
    for module in _flip_modules():
        for cls in _exceptions_defined_in(module):
            found[f"{module.__name__}.{cls.__name__}"] = cls
    assert "flip.errors.LookupFailed" in found  # the walk saw the errors module
    not_ours = [name for name, cls in found.items() if not issubclass(cls, FlipError)]
    assert not_ours == [], "derive these from flip.errors.FlipError"
    outside = [name for name in found if not name.startswith("flip.errors.") and not name.startswith(_ELSEWHERE)]
    assert outside == [], "define these in flip/errors.py"


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, other_base",
    [
        ("SiteMessageError", ValueError),
        ("JSONValueError", ValueError),
        ("NonFiniteModelError", ValueError),
        ("PrivacyError", ValueError),
        ("SettingsError", ValueError),
    ],
)
def test_errors_caught_as_value_errors_keep_that_base(name, other_base):
    assert issubclass(getattr(importlib.import_module("flip.errors"), name), other_base)
