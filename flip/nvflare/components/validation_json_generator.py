"""ValidationJsonGenerator: cross-site validation metrics as JSON, written when the ServerEventHandler asks."""

from __future__ import annotations

import os
from pathlib import Path

from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.widgets.validation_json_generator import ValidationJsonGenerator as _NVFlareGenerator

from flip import site_messages
from flip.checks import check_relative_name
from flip.constants import RunFile
from flip.files import write_json_atomic
from flip.nvflare.utils import run_dir, short_reason


class ValidationJsonGenerator(_NVFlareGenerator):
    """Collect VALIDATION_RESULT_RECEIVED metrics per site and model; write them as JSON on request.

    The file is ``<run dir>/<results_dir>/<json_file_name>``, laid out as
    ``{"<site>": {"<model>": {"<metric>": value, ...}, ...}, ...}`` where ``<model>`` is ``SRV_<file name>``
    for a server model (e.g. ``SRV_FL_global_model.pt``). NVFlare's own generator writes at END_RUN, in no
    particular order with other components; this one writes when :class:`ServerEventHandler` calls
    :meth:`write_results`, before the results are persisted. Each result is checked as it arrives: only a METRICS
    DXO's numbers are kept, nested in dicts and lists as the site sent them (FLIP's validators send
    ``{"f1-score": {"Effusion": [...]}}``); a site's bad entries and non-finite numbers are dropped and logged,
    naming the site, so the file is strict JSON.

    Args:
        results_dir: folder under the run folder. Default ``cross_site_val``.
        json_file_name: file name. Default ``cross_val_results.json``.
    """

    def __init__(self, results_dir=AppConstants.CROSS_VAL_DIR, json_file_name=RunFile.CROSS_VAL_RESULTS_FILE):
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
        if event_type == AppEventType.VALIDATION_RESULT_RECEIVED:
            self._record(fl_ctx)
            return
        super().handle_event(event_type, fl_ctx)

    def _record(self, fl_ctx: FLContext) -> None:
        """Keep a site's metrics for a model, checked as they arrive (flip.site_messages.nested_metrics): a METRICS
        DXO of numbers, nested at most; a bad entry (an array, a string, NaN) is dropped with a logged reason naming
        the site, and a result with nothing valid left is dropped whole."""
        model = fl_ctx.get_prop(AppConstants.MODEL_OWNER)
        site = fl_ctx.get_prop(AppConstants.DATA_CLIENT)
        result = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT)
        if not model or not site:
            self.log_error(fl_ctx, "a validation result without its model or site: not recorded")
            return
        metrics = self.checked_result(fl_ctx, result, f"validation of {model} at {site}", site)
        if metrics is not None:
            self._val_results.setdefault(site, {})[model] = metrics

    def checked_result(self, fl_ctx: FLContext, result, where: str, site: str) -> dict | None:
        """The metrics of a site's result as they may be written (None: nothing to keep), drops logged."""
        try:
            dxo = from_shareable(result) if isinstance(result, Shareable) else None
        except (ValueError, TypeError, KeyError):
            dxo = None
        if dxo is None:
            self.log_warning(fl_ctx, f"{where}: dropped what {site} sent: it is not a DXO")
            return None
        if dxo.data_kind != DataKind.METRICS:
            kind = getattr(dxo.data_kind, "value", dxo.data_kind)
            self.log_warning(fl_ctx, f"{where}: dropped what {site} sent: it is {kind}, expected METRICS")
            return None
        metrics, dropped = site_messages.nested_metrics(dxo.data, "result")
        for why in dropped:
            self.log_warning(fl_ctx, f"{where}: dropped what {site} sent: {short_reason(why)}")
        if metrics is None or (dropped and not metrics):
            return None
        return metrics

    def results_path(self, fl_ctx: FLContext) -> Path:
        return run_dir(fl_ctx) / self._results_dir / self._json_file_name

    def write_results(self, fl_ctx: FLContext) -> Path:
        """Write the JSON now (strict JSON: only checked numbers are in it) and return its path."""
        path = self.results_path(fl_ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self._val_results)
        self.log_info(
            fl_ctx,
            f"wrote {sum(len(m) for m in self._val_results.values())} validation results to {os.path.basename(path)}",
        )
        return path
