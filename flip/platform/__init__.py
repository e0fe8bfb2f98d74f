"""Platforms: ``dev`` (local files) and ``prod`` (the FLIP hub), behind one small interface, and FLIP's app API."""

from flip.checks import check_path_name
from flip.platform.base import Platform
from flip.platform.dev import LocalPlatform
from flip.platform.flip_api import FLIPBase
from flip.platform.site import current_site, set_current_site, site_context

__all__ = [
    "FLIPBase",
    "LocalPlatform",
    "Platform",
    "check_path_name",
    "current_site",
    "set_current_site",
    "site_context",
]
