"""Platforms: ``dev`` (local files) and ``prod`` (the FLIP hub), behind one small interface."""

from flip.checks import check_path_name
from flip.platform.base import Platform
from flip.platform.dev import LocalPlatform

__all__ = ["LocalPlatform", "Platform", "check_path_name"]
