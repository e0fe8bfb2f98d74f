"""The bodies of the FL API: what FLIP's hub sends and reads (``fl_service.py``), as pydantic models.

Names and shapes are FLIP's (its FL API's ``UploadAppRequest``, ``JobMetadata``, ``ServerInfoModel``,
``ClientInfoModel``). The request also takes the fields FLIP's older hub sent (``global_rounds``, ``local_rounds``,
``ignore_result_error``, ``aggregator``, ``aggregation_weights``, ``job_type``); other fields are ignored, as in
FLIP.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from flip.api.flare import JobStatus

#: FLIP's bound of global and local rounds (its FL API's TrainingRound)
MAX_ROUNDS = 1000


class UploadAppRequest(BaseModel):
    """``POST /upload_app/{model_id}``: stage the job of a model from its app bundle, with the hub's settings."""

    model_config = ConfigDict(extra="ignore")

    project_id: str = Field(
        max_length=1000,
        description="the hub's project id (FLIP's newest hub sends it "
        "encrypted); given to the app's classes as project_id",
    )
    cohort_query: str = Field(max_length=100_000, description="the cohort's SQL; given to the app as query")
    trusts: list[str] = Field(
        min_length=1,
        max_length=100,
        description="the trusts that train: FL kit slot names, each a site of the network "
        "(FLIP_API_TRUST_SITES maps other names)",
    )
    bundle_urls: list[str] = Field(
        min_length=1,
        max_length=100_000,
        description="one URL per file of the app bundle: an https:// link on a bundle host (the hub's pre-signed "
        "S3 URLs), s3://<bundle bucket>/<key> or file://<path under the bundle root> (a folder: all its files)",
    )
    global_rounds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ROUNDS,
        description="FLIP's older hub: training rounds (default: the app's config.json GLOBAL_ROUNDS, else 1)",
    )
    local_rounds: int | None = Field(
        default=None, ge=1, le=MAX_ROUNDS, description="FLIP's older hub: LOCAL_ROUNDS of the job's config.json"
    )
    ignore_result_error: bool | None = Field(default=None, description="FLIP's older hub: only false is supported")
    aggregator: str | None = Field(
        default=None,
        description="FLIP's older hub: InTimeAccumulateWeightedAggregator "
        "or AccumulateWeightedAggregator (both: flip's "
        "sample-weighted mean)",
    )
    aggregation_weights: dict[str, float] | None = Field(
        default=None, description="FLIP's older hub: only empty is supported"
    )
    job_type: str | None = Field(
        default=None, description="FLIP's job type (default: config.json's job_type, else standard)"
    )


class UploadAppResponse(BaseModel):
    """What ``upload_app`` staged."""

    message: str
    job_folder: str = Field(description="the folder to submit: POST /submit_job/{job_folder}")
    job_type: str
    sites: list[str] = Field(description="the sites the job runs at (the trusts, mapped)")
    rounds: int | None = None


class JobMetadata(BaseModel):
    """One job, as FLIP's hub reads it (``list_jobs`` items, ``abort_job``'s answer)."""

    job_id: str
    status: JobStatus


class ServerInfoModel(BaseModel):
    """The FL server engine's status (``started``, ``starting``, ``stopping``, ``stopped``) and start time."""

    status: str
    start_time: float | None = None


class ClientInfoModel(BaseModel):
    """A site: its name (the trust's, when FLIP_API_TRUST_SITES maps it), last connection and status (``no_jobs``,
    ``no_reply`` = offline, ``error``, or its job's status)."""

    name: str
    last_connect_time: float | None = None
    status: str


class HealthModel(BaseModel):
    status: str


class ErrorModel(BaseModel):
    """Every error: a short reason (never a traceback, a secret or a URL's query string)."""

    detail: str
