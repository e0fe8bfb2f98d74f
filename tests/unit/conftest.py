"""The unit tests' stand-ins live in tests/fakes.py (one place for every tier); FakeEngine is re-exported here for
the modules that import it from this file."""

from tests.fakes import FakeEngine

__all__ = ["FakeEngine"]
