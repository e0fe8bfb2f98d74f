"""All of flip's settings in one pydantic-settings model (environment prefix ``FLIP_``).

S3 endpoint and credentials are not here: boto3 reads its own chain (``AWS_ENDPOINT_URL_S3``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), so the same code runs
against the embedded SeaweedFS server and real AWS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flip.checks import check_bucket_name
from flip.constants import DEFAULT_PART_SIZE_MB, DEFAULT_THRESHOLD_MB
from flip.errors import SettingsError
from flip.platform.http import check_attempts, check_service_url, check_timeout

ENV_PREFIX = "FLIP_"


class FlipSettings(BaseSettings):
    """flip's settings, read from ``FLIP_*`` environment variables.

    Attributes:
        env: ``dev`` (local files under ``local_dir``) or ``prod`` (the FLIP hub's HTTP API).
        models_bucket: S3 bucket that receives each run's model and results.
        local_dir: the dev platform's folder (status, metrics, cohorts, images).
        hub_url: the hub's base URL (prod, server only; the server checks it is set at run start): ``https://``
            (``http://`` only for a loopback host), no ``user:password@``, query, whitespace or control character.
        hub_api_key: the hub's API key (prod, server only); never printed. Sites never hold it.
        hub_timeout: seconds per hub request, in (0, 300]. Default 5.
        hub_retries: attempts per hub request, 1 to 10, with capped backoff. Default 4.
        s3_create_bucket: create ``models_bucket`` if it is missing (otherwise a missing bucket is an error).
        s3_sse: server-side encryption for uploads (``AES256`` or ``aws:kms``), or none.
        s3_multipart_threshold_mb: objects of this size or more are uploaded in parts (>= 5). Default 1024.
        s3_part_size_mb: the part size of a multipart upload (>= 5, an S3 limit). Default 64.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    env: Literal["dev", "prod"] = "dev"
    models_bucket: str = "flip-models"
    local_dir: Path = Path("./.flip")
    hub_url: str | None = None
    hub_api_key: SecretStr | None = None
    s3_create_bucket: bool = False
    s3_sse: Literal["AES256", "aws:kms"] | None = None
    s3_multipart_threshold_mb: int = Field(default=DEFAULT_THRESHOLD_MB, ge=5)
    s3_part_size_mb: int = Field(default=DEFAULT_PART_SIZE_MB, ge=5)
    hub_timeout: float = 5.0
    hub_retries: int = 4

    @field_validator("models_bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        return check_bucket_name(value)

    @field_validator("hub_url")
    @classmethod
    def _hub_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return check_service_url(value, "hub URL")

    @field_validator("hub_timeout")
    @classmethod
    def _hub_timeout(cls, value: float) -> float:
        return check_timeout(value, "hub timeout")

    @field_validator("hub_retries")
    @classmethod
    def _hub_retries(cls, value: int) -> int:
        return check_attempts(value, "hub retries")

    def transfer(self):
        """boto3 managed-transfer settings from the S3 part settings."""
        from flip.storage.client import transfer_config

        return transfer_config(self.s3_multipart_threshold_mb, self.s3_part_size_mb)


_SECRET_FIELDS = {"hub_api_key"}


def load_settings(**overrides) -> FlipSettings:
    """Read the settings from the environment (``overrides`` win), naming the variable on any error.

    Raises:
        SettingsError: a variable is missing or invalid; the message names it and what is allowed, and
            never echoes a secret's value.
    """
    try:
        return FlipSettings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            var = ENV_PREFIX + field.upper() if field else "FLIP_* settings"
            message = err["msg"].removeprefix("Value error, ")
            if field in _SECRET_FIELDS:
                message = "invalid value (not shown)"
            elif field and "input" in err and field not in message and err["type"] != "value_error":
                message = f"{message} (got {err['input']!r})"
            problems.append(f"{var}: {message}")
        raise SettingsError("invalid flip settings: " + "; ".join(problems)) from None
