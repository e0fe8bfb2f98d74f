"""The end of a successful run on the server, in a fixed order: write ``metrics.json``, the results JSON, the run's
other artifacts and its report, then upload, verify and clean up through PersistToS3AndCleanup.

The ServerEventHandler calls :func:`finish_run` at END_RUN (unless the run failed or was aborted) and reports the
status it returns; the hand-over to PersistToS3AndCleanup is by arguments, not fl_ctx properties.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext

from flip.constants import RunFile, RunStatus
from flip.errors import CleanupError, FlipError, NonFiniteModelError
from flip.nvflare.utils import run_dir, short_reason, software_versions
from flip.report import write_report
from flip.run_metrics import RunMetrics
from flip.storage.layout import run_prefix

if TYPE_CHECKING:
    from flip.nvflare.components.persist_to_s3_and_cleanup import PersistToS3AndCleanup
    from flip.nvflare.components.validation_json_generator import ValidationJsonGenerator


@dataclass(frozen=True)
class RunEnd:
    """What the end of the run came to.

    Attributes:
        status: the final status to report (RESULTS_UPLOADED or ERROR).
        reason: the status's reason (ERROR only).
        advice: what the operator can do next, logged at error level after the status (ERROR only).
        upload_key: ``s3://<bucket>/<prefix>`` of the verified upload (RESULTS_UPLOADED only).
    """

    status: RunStatus
    reason: str | None = None
    advice: str | None = None
    upload_key: str | None = None


def finish_run(
    component: FLComponent,
    fl_ctx: FLContext,
    metrics: RunMetrics,
    json_generator: ValidationJsonGenerator,
    persist: PersistToS3AndCleanup,
    statuses: list[RunStatus],
) -> RunEnd:
    """Write the run's files, then upload, verify and clean up; return the final status to report.

    Expected failures become an ERROR with the true advice (resume only when this run's upload was recorded):
    a model holding NaN/Inf (never uploaded), a cleanup that failed after a verified upload, and any other
    FlipError, OSError or ValueError (nothing deleted). A failure of the report alone never stops the upload.

    Args:
        component: logs through it (the ServerEventHandler).
        metrics: the run's metrics (its run id is the S3 key's job part).
        json_generator: the results JSON's generator (nothing is written when it has no results).
        persist: the run's PersistToS3AndCleanup.
        statuses: the statuses reported so far (for the report).
    """
    folder = run_dir(fl_ctx)
    try:
        artifacts = write_artifacts(component, fl_ctx, metrics, json_generator, persist, statuses)
        sites = metrics.sites()
        info: dict[str, Any] = {"rounds": len(metrics.rounds), "sites": sites}
        if metrics.stopped_early:
            info["stopped_early"] = metrics.stopped_early
        manifest = persist.execute(fl_ctx, run_id=metrics.run_id, artifacts=artifacts, info=info)
    except NonFiniteModelError as exc:
        return RunEnd(
            RunStatus.ERROR,
            f"results not uploaded: {exc}",
            "a model holding NaN or Inf is never uploaded: nothing was uploaded or deleted",
        )
    except CleanupError as exc:
        uploaded = persist.manifest
        where = f"s3://{persist.bucket_name}/{uploaded['prefix']}" if uploaded else "S3"
        return RunEnd(
            RunStatus.ERROR,
            f"results verified at {where} but cleanup failed: {exc}",
            what_next(folder, persist, "the results are verified in S3"),
        )
    except (FlipError, OSError, ValueError) as exc:
        return RunEnd(
            RunStatus.ERROR, f"results not uploaded: {exc}", what_next(folder, persist, "nothing was deleted")
        )
    key = f"s3://{persist.bucket_name}/{manifest['prefix']}"
    component.log_info(fl_ctx, f"model and results verified at {key}")
    return RunEnd(RunStatus.RESULTS_UPLOADED, upload_key=key)


def write_artifacts(
    component: FLComponent,
    fl_ctx: FLContext,
    metrics: RunMetrics,
    json_generator: ValidationJsonGenerator,
    persist: PersistToS3AndCleanup,
    statuses: list[RunStatus],
) -> dict[str, Path]:
    """Write ``metrics.json``, the results JSON (if there are results: none when the job skips model tests) and
    the report; return every artifact to upload besides the models, object key -> local path (the files under
    ``flip_artifacts/``, e.g. ``ensemble.pt``, included)."""
    folder = run_dir(fl_ctx)
    artifacts = {RunFile.METRICS: metrics.write(folder / RunFile.METRICS)}
    if json_generator.results:
        results = json_generator.write_results(fl_ctx)
        artifacts[f"{RunFile.RESULTS_DIR}/{results.name}"] = results
    extra = folder / RunFile.ARTIFACTS_DIR
    if extra.is_dir():
        artifacts.update({p.relative_to(extra).as_posix(): p for p in sorted(extra.rglob("*")) if p.is_file()})
    artifacts.update(_write_report(component, fl_ctx, metrics, json_generator, persist, statuses))
    return artifacts


def _write_report(
    component: FLComponent,
    fl_ctx: FLContext,
    metrics: RunMetrics,
    json_generator: ValidationJsonGenerator,
    persist: PersistToS3AndCleanup,
    statuses: list[RunStatus],
) -> dict[str, Path]:
    """Curves and a one-page summary in <run folder>/report/ (a failure here never stops the upload)."""
    doc = {
        **metrics.document(),
        "sites": metrics.sites(),
        "validation": json_generator.results,
        "statuses": [s.value for s in statuses],
        "upload_pending": True,  # written before the upload it is part of: the page says what is known then
        "s3": f"s3://{persist.bucket_name}/{run_prefix(metrics.model_id, metrics.run_id)}",
        "initial_model": getattr(persist.model_persistor, "initial_source", None),
        "versions": software_versions(),
    }
    try:
        written = write_report(doc, run_dir(fl_ctx) / RunFile.REPORT_DIR)
    except Exception as exc:  # noqa: BLE001
        # The report is optional and draws arbitrary numbers with matplotlib: whatever fails in it (a disk
        # error, a plotting library's surprise) must not cost the run the upload of its model and results.
        component.log_warning(fl_ctx, f"no report ({type(exc).__name__}): {short_reason(exc)}")
        return {}
    return {f"{RunFile.REPORT_DIR}/{name}": path for name, path in written.items()}


def what_next(folder: Path, persist: PersistToS3AndCleanup, done: str) -> str:
    """What the operator can do after a failed end of run: resume only if this run's upload was recorded."""
    recorded = persist.pending is not None and (folder / RunFile.UPLOAD_PENDING).is_file()
    if recorded:
        return f"{done}: fix the cause, then finish with `flip upload --resume {folder}`"
    return (
        f"nothing was uploaded and nothing was deleted: the run folder {folder} keeps what the run wrote "
        f"(the model, logs); no upload was recorded ({RunFile.UPLOAD_PENDING} was not written), so "
        f"`flip upload --resume` cannot finish this run"
    )
