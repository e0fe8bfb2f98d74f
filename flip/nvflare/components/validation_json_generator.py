"""ValidationJsonGenerator: cross-site validation metrics as JSON, written when the ServerEventHandler asks."""

from __future__ import annotations

import os
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.widgets.validation_json_generator import ValidationJsonGenerator as _NVFlareGenerator

from flip.nvflare.utils import run_dir
from flip.storage.s3 import check_object_key


def check_relative_name(arg: str, value: str, suffix: str = "") -> str:
    """Return ``value`` if it is a relative path of safe names (no '..'), else raise ValueError naming ``arg``.

    Safe means what an object key under the run's prefix may be (it becomes one when the results are uploaded).
    """
    try:
        safe = check_object_key(value).endswith(suffix)
    except ValueError:
        safe = False
    if not safe:
        need = f" ending in {suffix!r}" if suffix else ""
        raise ValueError(f"{arg} must be a relative path of letters, digits, '.', '_', '-'{need}, got {value!r}")
    return value


class ValidationJsonGenerator(_NVFlareGenerator):
    """Collect VALIDATION_RESULT_RECEIVED metrics per site and model; write them as JSON on request.

    The file is ``<run dir>/<results_dir>/<json_file_name>``, laid out as
    ``{"<site>": {"<model>": {"<metric>": value, ...}, ...}, ...}`` where ``<model>`` is ``SRV_<file name>``
    for a server model (e.g. ``SRV_FL_global_model.pt``). NVFlare's own generator writes at END_RUN, in no
    particular order with other components; this one writes when :class:`ServerEventHandler` calls
    :meth:`write_results`, before the results are persisted.

    Args:
        results_dir: folder under the run folder. Default ``cross_site_val``.
        json_file_name: file name. Default ``cross_val_results.json``.
    """

    def __init__(self, results_dir=AppConstants.CROSS_VAL_DIR, json_file_name="cross_val_results.json"):
        super().__init__(
            results_dir=check_relative_name("results_dir", results_dir),
            json_file_name=check_relative_name("json_file_name", json_file_name, ".json"),
        )

    @property
    def results(self) -> dict:
        """The results collected so far: site -> model -> metrics."""
        return self._val_results

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.END_RUN:
            return  # written by write_results(), called by the ServerEventHandler in a fixed order
        super().handle_event(event_type, fl_ctx)

    def results_path(self, fl_ctx: FLContext) -> Path:
        return run_dir(fl_ctx) / self._results_dir / self._json_file_name

    def write_results(self, fl_ctx: FLContext) -> Path:
        """Write the JSON now and return its path."""
        super().handle_event(EventType.END_RUN, fl_ctx)
        path = self.results_path(fl_ctx)
        self.log_info(fl_ctx, f"wrote {sum(len(m) for m in self._val_results.values())} validation results to {os.path.basename(path)}")
        return path
