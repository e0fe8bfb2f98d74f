"""What ``upload_app`` does with a bundle: trusts to sites, the request's older fields checked, the job built by
flip's job builder (``flip job create``'s) and staged in the admin kit's transfer folder as ``<model_id>/``.

A staged folder is replaced only once its successor is complete (built beside it, then swapped in); nothing outside
the transfer folder is written or deleted.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from flip.api.bundle import BundleFile, fetch_bundle
from flip.api.schemas import UploadAppRequest
from flip.api.settings import MAX_TRUST_NAME, ServiceConfig
from flip.checks import check_model_id, check_path_name, check_str
from flip.constants import JobType
from flip.errors import ApiError

logger = logging.getLogger("flip.api")
#: FLIP's aggregators (its FL API's FLAggregators): both are NVFlare's sample-weighted mean, as flip's aggregator
FLIP_AGGREGATORS = ("InTimeAccumulateWeightedAggregator", "AccumulateWeightedAggregator")
_STAGING_PREFIX = ".flip-api-"


def check_older_fields(body: UploadAppRequest) -> None:
    """Refuse the values of FLIP's older request fields that flip's jobs cannot honour (nothing is ignored
    silently).

    Raises:
        ApiError: (400) ``ignore_result_error`` true, an aggregator that is not one of FLIP's two weighted means, or
            per-site ``aggregation_weights`` (named).
    """
    if body.ignore_result_error:
        raise ApiError(
            "ignore_result_error true is not supported: a site's failed result ends the run in ERROR "
            "naming it (send false or leave it out)"
        )
    if body.aggregator is not None and body.aggregator not in FLIP_AGGREGATORS:
        raise ApiError(
            f"aggregator must be one of {list(FLIP_AGGREGATORS)} or null (flip weighs each site's update "
            f"by its samples), got {body.aggregator[:100]!r}"
        )
    if body.aggregation_weights:
        raise ApiError(
            "aggregation_weights are not supported: flip weighs each site's update by its number of "
            "samples (send {} or leave it out)"
        )


def map_trusts(trusts: list[str], trust_sites: dict[str, str], connected: list[str]) -> list[str]:
    """Return the site of each trust (``trust_sites``, else the trust's own name), each connected to the server.

    Raises:
        ApiError: (400) a trust is not a name, is given twice, or its site is not connected to the FL server (every
            such trust named, with the sites that are).
    """
    sites = []
    for trust in trusts:
        try:
            check_str("trust", trust, max_length=MAX_TRUST_NAME)
            sites.append(check_path_name("site", trust_sites.get(trust, trust)))
        except ValueError as exc:
            raise ApiError(f"trusts: {exc}") from None
    if len(set(sites)) != len(sites):
        raise ApiError(f"trusts name a site twice: {trusts!r}")
    missing = [
        f"{t!r}" + (f" (site {s!r})" if s != t else "")
        for t, s in zip(trusts, sites, strict=True)
        if s not in connected
    ]
    if missing:
        names = trust_names(trust_sites)
        there = [f"{names[c]} (site {c})" if c in names else c for c in sorted(connected)]
        raise ApiError(
            f"trust(s) {', '.join(missing)} not in the network: the sites connected to the FL server are "
            f"{', '.join(there) or 'none'}"
        )
    return sites


def trust_names(trust_sites: dict[str, str]) -> dict[str, str]:
    """Site -> trust name (the inverse of ``FLIP_API_TRUST_SITES``): how the hub knows a site."""
    return {site: trust for trust, site in trust_sites.items()}


@dataclass(frozen=True)
class Staged:
    """A job folder ``upload_app`` staged."""

    folder: Path
    job_type: str
    sites: list[str]
    rounds: int | None


def _job_type(body: UploadAppRequest, app_dir: Path) -> str:
    from flip.jobs.flip_app import JOB_TYPE_KEY, read_config

    if body.job_type is not None:
        return body.job_type
    declared = read_config(app_dir).get(JOB_TYPE_KEY) if (app_dir / "config.json").is_file() else None
    return declared if declared is not None else JobType.STANDARD.value


def stage_job(
    files: list[BundleFile],
    upload_dir: Path,
    model_id: str,
    body: UploadAppRequest,
    sites: list[str],
    config: ServiceConfig,
    s3_client=None,
) -> Staged:
    """Fetch the bundle, build the job with flip's job builder and stage it as ``upload_dir/<model_id>``.

    The job runs at ``sites`` only, each needed (``min_clients`` is their number); ``project_id`` and
    ``cohort_query`` reach the app's classes as ``project_id`` and ``query``; rounds are the request's
    ``global_rounds``, else the app's ``GLOBAL_ROUNDS``, else 1.

    Raises:
        ApiError: (400) the bundle or the app does not make a job (the reason, the bundle's path not shown);
            (502) S3 failed.
    """
    from flip.jobs.flip_app import create_job

    upload_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=upload_dir))
    try:
        bundle = work / "bundle"
        bundle.mkdir()
        app_dir = fetch_bundle(files, bundle, config, s3_client)
        try:
            job_type = _job_type(body, app_dir)
            created = create_job(
                app_dir,
                work / "job" / model_id,
                job_type,
                model_id=model_id,
                project_id=body.project_id,
                query=body.cohort_query,
                min_clients=len(sites),
                rounds=body.global_rounds,
                local_rounds=body.local_rounds,
                participants=sites,
            )
        except ValueError as exc:  # AppError too: the app does not fit its job type
            raise ApiError(str(exc).replace(str(app_dir), "the bundle").replace(str(work), "the bundle")) from exc
        target = upload_dir / model_id
        _swap(created.path, target, upload_dir)
        plan = created.plan
        rounds = sum(s["num_rounds"] for s in plan.stages) if plan.stages else plan.rounds
        logger.info(
            "staged job %s: %s, sites %s, %s round(s), from %d bundle file(s)",
            model_id,
            plan.app.job_type,
            ", ".join(sites),
            rounds,
            len(files),
        )
        return Staged(target, plan.app.job_type, sites, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _swap(new: Path, target: Path, upload_dir: Path) -> None:
    """Put ``new`` at ``target``; a folder already there is moved aside first and deleted after (a link there is
    removed, never followed)."""
    old = None
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        old = upload_dir / f"{_STAGING_PREFIX}old-{uuid.uuid4().hex}"
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_job_folder(job_folder: str) -> str:
    """Return ``job_folder`` if it is one safe name (a staged job folder's: a model id), in canonical form.

    Raises:
        ApiError: (400) not one safe name: ``..``, a slash, a control character (named).
    """
    try:
        return check_model_id(job_folder)  # upload_app stages a model id in its canonical form
    except ValueError:
        pass
    try:
        return check_path_name("job folder", job_folder)
    except ValueError as exc:
        raise ApiError(str(exc)) from None


def staged_folder(upload_dir: Path, job_folder: str) -> Path:
    """The staged job folder ``job_folder`` (checked by :func:`check_job_folder`) in ``upload_dir``.

    Raises:
        ApiError: (404) nothing is staged under that name.
    """
    folder = upload_dir / check_job_folder(job_folder)
    if folder.is_symlink() or not (folder / "meta.json").is_file() or job_folder.startswith(_STAGING_PREFIX):
        raise ApiError(f"no job folder {job_folder!r} is staged: POST /upload_app/{job_folder} first", status=404)
    return folder
