"""All of flip's settings in one pydantic-settings model (environment prefix ``FLIP_``, and FLIP's own names).

FLIP's variables (``LOCAL_DEV``, ``DEV_DATAFRAME``, ``DEV_IMAGES_DIR``, ``MIN_CLIENTS``, ``NET_ID``, the trust and
hub service variables...) are read under FLIP's names, unprefixed, with FLIP's defaults; ``flip.constants.FlipConstants``
gives FLIP apps attribute access to them. Dev or prod is one rule, :func:`resolve_env`: ``FLIP_ENV`` (ours) and
``LOCAL_DEV`` (FLIP's) each decide alone; both set and contradicting is an error naming both; neither set is dev.

S3 endpoint and credentials are not here: boto3 reads its own chain (``AWS_ENDPOINT_URL_S3``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), so the same code runs
against the embedded SeaweedFS server and real AWS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flip.checks import check_bucket_name, check_path_name
from flip.constants import DEFAULT_PART_SIZE_MB, DEFAULT_THRESHOLD_MB
from flip.errors import SettingsError
from flip.platform.http import check_attempts, check_service_url, check_timeout
from flip.platform.site import DevData, SiteData, check_site_data

ENV_PREFIX = "FLIP_"
Env = Literal["dev", "prod"]


def resolve_env(flip_env: Env | None, local_dev: bool | None) -> Env:
    """Return ``dev`` or ``prod`` from ``FLIP_ENV`` (ours) and ``LOCAL_DEV`` (FLIP's); None means unset.

    Either alone decides (``LOCAL_DEV=true`` is dev, ``false`` is prod); both set must agree; neither set is dev
    (FLIP's default: an unset ``LOCAL_DEV`` is dev).

    Raises:
        SettingsError: both are set and contradict each other (names both variables and their values).
    """
    from_local_dev = None if local_dev is None else ("dev" if local_dev else "prod")
    if flip_env is not None and from_local_dev is not None and flip_env != from_local_dev:
        raise SettingsError(f"FLIP_ENV={flip_env} and LOCAL_DEV={str(local_dev).lower()} contradict each other "
                            f"(LOCAL_DEV={str(local_dev).lower()} means {from_local_dev}): unset one of them or make "
                            f"them agree")
    return flip_env or from_local_dev or "dev"


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
        local_dev: FLIP's ``LOCAL_DEV`` as set (None: unset); ``env`` is the decision (:func:`resolve_env`).
        site_data: ``FLIP_SITE_DATA``, each simulated site's dev CSV and image root (flip.platform.site).

    FLIP's variables, unprefixed, with FLIP's defaults (``FlipConstants.<NAME>`` reads them):
        dev_dataframe (``DEV_DATAFRAME``), dev_images_dir (``DEV_IMAGES_DIR``): the dev platform's CSV and image
        root. min_clients (``MIN_CLIENTS``, >= 1), mlflow_tracking_uri (``MLFLOW_TRACKING_URI``). Hub (server):
        flip_api_internal_url, internal_service_key_header, internal_service_key (secret), server_checkpoint_root.
        Trust (sites): data_access_api_url, imaging_api_url, trust_internal_service_key_header,
        trust_internal_service_key (secret). Shared: images_dir, net_id (a safe path name: it names a folder),
        uploaded_federated_data_bucket (``s3://...``). The service URLs are kept as given: the clients of those
        services check them.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    env: Env | None = None
    local_dev: bool | None = Field(default=None, validation_alias="LOCAL_DEV")
    site_data: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
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

    # FLIP's own variables (validation_alias: the exact, unprefixed name)
    dev_dataframe: str = Field(default="", validation_alias="DEV_DATAFRAME")
    dev_images_dir: str = Field(default="", validation_alias="DEV_IMAGES_DIR")
    min_clients: PositiveInt = Field(default=1, validation_alias="MIN_CLIENTS")
    mlflow_tracking_uri: str = Field(default="", validation_alias="MLFLOW_TRACKING_URI")
    flip_api_internal_url: str = Field(default="http://localhost:8000", validation_alias="FLIP_API_INTERNAL_URL")
    internal_service_key_header: str = Field(default="X-Internal-Service-Key",
                                             validation_alias="INTERNAL_SERVICE_KEY_HEADER")
    internal_service_key: SecretStr = Field(default=SecretStr(""), validation_alias="INTERNAL_SERVICE_KEY")
    server_checkpoint_root: str = Field(default="/app/server-checkpoints", validation_alias="SERVER_CHECKPOINT_ROOT")
    data_access_api_url: str = Field(default="http://localhost:8001", validation_alias="DATA_ACCESS_API_URL")
    imaging_api_url: str = Field(default="http://localhost:8002", validation_alias="IMAGING_API_URL")
    trust_internal_service_key_header: str = Field(default="X-Trust-Internal-Service-Key",
                                                   validation_alias="TRUST_INTERNAL_SERVICE_KEY_HEADER")
    trust_internal_service_key: SecretStr = Field(default=SecretStr(""), validation_alias="TRUST_INTERNAL_SERVICE_KEY")
    images_dir: str = Field(default="", validation_alias="IMAGES_DIR")
    net_id: str = Field(default="default", validation_alias="NET_ID")
    uploaded_federated_data_bucket: str = Field(default="s3://default-bucket",
                                                validation_alias="UPLOADED_FEDERATED_DATA_BUCKET")

    @model_validator(mode="after")
    def _decide_env(self) -> FlipSettings:
        try:
            self.env = resolve_env(self.env, self.local_dev)
        except SettingsError as exc:
            raise ValueError(str(exc)) from None
        return self

    @field_validator("site_data", mode="before")
    @classmethod
    def _site_data(cls, value: Any) -> dict[str, SiteData]:
        return check_site_data(value)

    @field_validator("net_id")
    @classmethod
    def _net_id(cls, value: str) -> str:
        return check_path_name("NET_ID", value)  # it names a folder (<IMAGES_DIR>/<NET_ID>) and a URL part

    @field_validator("uploaded_federated_data_bucket")
    @classmethod
    def _results_bucket(cls, value: str) -> str:
        if not value.startswith("s3://"):
            raise ValueError(f"must be an s3:// URL such as s3://bucket/prefix, got {value!r}")
        return value

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

    def dev_data(self) -> DevData:
        """The dev platform's data variables (``DEV_DATAFRAME``, ``DEV_IMAGES_DIR``, ``FLIP_SITE_DATA``)."""
        return DevData(dataframe=self.dev_dataframe, images_dir=self.dev_images_dir, sites=dict(self.site_data))


_SECRET_FIELDS = {"hub_api_key", "internal_service_key", "trust_internal_service_key"}


def env_var(field: str) -> str:
    """The environment variable of a FlipSettings field (``env`` -> ``FLIP_ENV``, ``local_dev`` -> ``LOCAL_DEV``)."""
    info = FlipSettings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    return ENV_PREFIX + field.upper()


def _field_of(loc: str) -> str:
    """The field behind an error location, which pydantic gives as the field name or as its alias."""
    for name, info in FlipSettings.model_fields.items():
        if loc == name or loc == info.validation_alias:
            return name
    return loc


#: FLIP's setting names (``FlipConstants.<NAME>``) -> FlipSettings fields; LOCAL_DEV is the resolved decision
FLIP_NAMES: dict[str, str] = {
    info.validation_alias: name for name, info in FlipSettings.model_fields.items()
    if isinstance(info.validation_alias, str)
}


def flip_constant(name: str, settings: FlipSettings | None = None) -> Any:
    """The value FLIP's ``FlipConstants.<name>`` gives (``LOCAL_DEV`` is :func:`resolve_env`'s decision).

    Secrets stay ``SecretStr`` (``.get_secret_value()`` reads them), so printing one never shows it.

    Raises:
        AttributeError: ``name`` is not one of FLIP's settings (names the allowed ones).
        SettingsError: a variable is invalid.
    """
    if name not in FLIP_NAMES:
        raise AttributeError(f"FlipConstants has no setting {name!r}; FLIP's settings are {sorted(FLIP_NAMES)}")
    settings = settings or load_settings()
    if name == "LOCAL_DEV":
        return settings.env == "dev"
    return getattr(settings, FLIP_NAMES[name])


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
            field = _field_of(str(err["loc"][0])) if err["loc"] else ""
            message = err["msg"].removeprefix("Value error, ")
            if not field:  # a rule across variables: its message names them
                problems.append(message)
                continue
            if field in _SECRET_FIELDS:
                message = "invalid value (not shown)"
            elif "input" in err and field not in message and err["type"] != "value_error":
                message = f"{message} (got {err['input']!r})"
            var = env_var(field)
            problems.append(message if message.startswith(var) else f"{var}: {message}")
        raise SettingsError("invalid flip settings: " + "; ".join(problems)) from None
