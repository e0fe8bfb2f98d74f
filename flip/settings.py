"""All of flip's settings in one pydantic-settings model (environment prefix ``FLIP_``, and FLIP's own names).

FLIP's variables (``LOCAL_DEV``, ``DEV_DATAFRAME``, ``DEV_IMAGES_DIR``, ``MIN_CLIENTS``, ``NET_ID``, the trust and
hub service variables...) are read under FLIP's names, unprefixed, with FLIP's defaults; ``flip.constants.FlipConstants``
gives FLIP apps attribute access to them. Dev or prod is one rule, :func:`resolve_env`: ``FLIP_ENV`` (ours) and
``LOCAL_DEV`` (FLIP's) each decide alone; both set and contradicting is an error naming both; neither set is dev.
The same rule holds for every setting that has a FLIP name and one of ours (:data:`ALIASES`, :func:`one_of`):
``FLIP_API_INTERNAL_URL`` / ``FLIP_HUB_URL``, ``INTERNAL_SERVICE_KEY`` / ``FLIP_HUB_API_KEY``,
``UPLOADED_FEDERATED_DATA_BUCKET`` / ``FLIP_MODELS_BUCKET``: either alone sets it, both set must agree.

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
from flip.platform.http import check_api_url, check_attempts, check_header_name, check_http_hosts, check_timeout
from flip.platform.site import DevData, SiteData, check_site_data, check_site_env

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
        raise SettingsError(
            f"FLIP_ENV={flip_env} and LOCAL_DEV={str(local_dev).lower()} contradict each other "
            f"(LOCAL_DEV={str(local_dev).lower()} means {from_local_dev}): unset one of them or make "
            f"them agree"
        )
    return flip_env or from_local_dev or "dev"


#: FLIP's variable -> ours, for each setting that has both names (flip.settings.FlipSettings._one_setting_per_pair)
ALIASES: dict[str, str] = {
    "FLIP_API_INTERNAL_URL": "FLIP_HUB_URL",
    "INTERNAL_SERVICE_KEY": "FLIP_HUB_API_KEY",
    "UPLOADED_FEDERATED_DATA_BUCKET": "FLIP_MODELS_BUCKET",
}
#: FLIP's defaults of the FLIP variables whose effective value flip decides from both names (FlipConstants shows them)
FLIP_DEFAULTS: dict[str, Any] = {
    "FLIP_API_INTERNAL_URL": "http://localhost:8000",
    "INTERNAL_SERVICE_KEY": SecretStr(""),
}
DEFAULT_MODELS_BUCKET = "flip-models"


def _unset(value: Any) -> bool:
    """An empty variable is an unset one (FLIP's defaults are empty strings)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is None or value == ""


def one_of(flip_name: str, flip_value: Any, our_name: str, our_value: Any, same=None, secret: bool = False) -> Any:
    """The value of a setting FLIP and flip name differently: either variable alone sets it; both set must agree.

    Args:
        flip_name, flip_value: FLIP's variable and its value (None or "" is unset).
        our_name, our_value: flip's alias and its value.
        same: ``same(a, b)`` tells whether two values agree. Default: equality.
        secret: never show the values in the message.

    Raises:
        ValueError: both are set and disagree (names both variables; values only if not secret).
    """
    if _unset(flip_value):
        return None if _unset(our_value) else our_value
    if _unset(our_value):
        return flip_value
    a, b = (v.get_secret_value() if isinstance(v, SecretStr) else v for v in (flip_value, our_value))
    if not (same(a, b) if same else a == b):
        shown = "" if secret else f" ({flip_name}={a!r}, {our_name}={b!r})"
        raise ValueError(
            f"{flip_name} and {our_name} name the same setting and are both set, differently{shown}: "
            f"unset one of them (FLIP's {flip_name} is preferred) or make them agree"
        )
    return flip_value


def bucket_of(url: str) -> str:
    """The bucket of ``UPLOADED_FEDERATED_DATA_BUCKET`` (``s3://<bucket>``, no key prefix).

    Raises:
        ValueError: not ``s3://<bucket>`` (a key prefix is refused: flip keeps each run at
            ``<bucket>/<model_id>/<run_id>/``, where FLIP's hub lists ``<bucket>/<model_id>``).
    """
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise ValueError(f"must be an s3:// URL such as s3://bucket, got {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if prefix.strip("/"):
        raise ValueError(
            f"must name a bucket without a key prefix (s3://<bucket>): flip keeps each run at "
            f"<bucket>/<model_id>/<run_id>/, where FLIP's hub lists <bucket>/<model_id>; got {url!r}"
        )
    return check_bucket_name(bucket)


class FlipSettings(BaseSettings):
    """flip's settings, read from ``FLIP_*`` environment variables and FLIP's own names.

    Attributes:
        env: ``dev`` (local files under ``local_dir``) or ``prod`` (FLIP's hub and the trust's services).
        models_bucket: S3 bucket that receives each run's model and results: ``FLIP_MODELS_BUCKET``, or FLIP's
            ``UPLOADED_FEDERATED_DATA_BUCKET`` (``s3://<bucket>``); both set must agree. Default ``flip-models``.
        local_dir: the dev platform's folder (status, metrics, cohorts, images); in prod the server's record of
            final statuses the hub did not take (for ``flip status --resend``).
        hub_url: FLIP's hub internal API, ``/api`` included (prod, server only; checked at run start):
            ``FLIP_API_INTERNAL_URL``, or ``FLIP_HUB_URL``; both set must agree. ``https://`` (``http://`` only for
            a loopback host or one in ``FLIP_HTTP_HOSTS``), no ``user:password@``, query, whitespace or control
            character.
        hub_api_key: the hub's internal service key (prod, server only): ``INTERNAL_SERVICE_KEY``, or
            ``FLIP_HUB_API_KEY``; never printed. Sites never hold it.
        internal_service_key_file: a file holding the key instead (``INTERNAL_SERVICE_KEY_FILE``, ours): read by
            the server when it first talks to the hub, so the key is never in any process's environment. Setting
            it and a key variable is an error.
        internal_service_key_header: the header the hub checks (``INTERNAL_SERVICE_KEY_HEADER``).
        hub_user_token: a hub user's bearer token for ``flip status`` (``FLIP_HUB_USER_TOKEN``, ours): FLIP's
            routes that read a model's status, metrics and logs are user routes.
        hub_timeout: seconds per hub request, in (0, 300]. Default 5.
        hub_retries: attempts per hub request, 1 to 10, with capped backoff. Default 4.
        http_hosts: ``FLIP_HTTP_HOSTS``, host names reached over plain ``http://`` (FLIP's private Docker
            networks: ``flip-api``, ``data-access-api``, ``imaging-api``); every other host needs https.
        trust_timeout, trust_retries, trust_max_response_mb: ``FLIP_TRUST_TIMEOUT`` (s, (0, 300], default 120),
            ``FLIP_TRUST_RETRIES`` (1-10, default 3), ``FLIP_TRUST_MAX_RESPONSE_MB`` (1-4096, default 256): a
            site's requests to its trust's services.
        s3_create_bucket: create ``models_bucket`` if it is missing (otherwise a missing bucket is an error).
        s3_sse: server-side encryption for uploads (``AES256`` or ``aws:kms``), or none.
        s3_multipart_threshold_mb: objects of this size or more are uploaded in parts (>= 5). Default 1024.
        s3_part_size_mb: the part size of a multipart upload (>= 5, an S3 limit). Default 64.
        local_dev: FLIP's ``LOCAL_DEV`` as set (None: unset); ``env`` is the decision (:func:`resolve_env`).
        site_data: ``FLIP_SITE_DATA``, each simulated site's dev CSV and image root (flip.platform.site).
        site_env: ``FLIP_SITE_ENV``, each simulated site's trust variables (flip.platform.site).

    FLIP's variables, unprefixed, with FLIP's defaults (``FlipConstants.<NAME>`` reads them):
        dev_dataframe (``DEV_DATAFRAME``), dev_images_dir (``DEV_IMAGES_DIR``): the dev platform's CSV and image
        root. min_clients (``MIN_CLIENTS``, >= 1), mlflow_tracking_uri (``MLFLOW_TRACKING_URI``). Hub (server):
        above, and server_checkpoint_root. Trust (sites): data_access_api_url, imaging_api_url,
        trust_internal_service_key_header, trust_internal_service_key (secret), images_dir (where the imaging
        service puts images; a path it answers outside ``<IMAGES_DIR>`` is refused). Shared: net_id (a safe path
        name: it names a folder). The trust URLs are kept as given: the trust client checks them when it calls.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    env: Env | None = None
    local_dev: bool | None = Field(default=None, validation_alias="LOCAL_DEV")
    site_data: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    site_env: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict, repr=False)
    models_bucket: str | None = None
    local_dir: Path = Path("./.flip")
    hub_url: str | None = None
    hub_api_key: SecretStr | None = None
    hub_user_token: SecretStr | None = None
    http_hosts: Annotated[frozenset[str], NoDecode] = frozenset()
    s3_create_bucket: bool = False
    s3_sse: Literal["AES256", "aws:kms"] | None = None
    s3_multipart_threshold_mb: int = Field(default=DEFAULT_THRESHOLD_MB, ge=5)
    s3_part_size_mb: int = Field(default=DEFAULT_PART_SIZE_MB, ge=5)
    hub_timeout: float = 5.0
    hub_retries: int = 4
    trust_timeout: float = 120.0
    trust_retries: int = 3
    trust_max_response_mb: int = Field(default=256, ge=1, le=4096)

    # FLIP's own variables (validation_alias: the exact, unprefixed name)
    dev_dataframe: str = Field(default="", validation_alias="DEV_DATAFRAME")
    dev_images_dir: str = Field(default="", validation_alias="DEV_IMAGES_DIR")
    min_clients: PositiveInt = Field(default=1, validation_alias="MIN_CLIENTS")
    mlflow_tracking_uri: str = Field(default="", validation_alias="MLFLOW_TRACKING_URI")
    flip_api_internal_url: str | None = Field(default=None, validation_alias="FLIP_API_INTERNAL_URL")
    internal_service_key_header: str = Field(
        default="X-Internal-Service-Key", validation_alias="INTERNAL_SERVICE_KEY_HEADER"
    )
    internal_service_key: SecretStr | None = Field(default=None, validation_alias="INTERNAL_SERVICE_KEY")
    internal_service_key_file: Path | None = Field(default=None, validation_alias="INTERNAL_SERVICE_KEY_FILE")
    server_checkpoint_root: str = Field(default="/app/server-checkpoints", validation_alias="SERVER_CHECKPOINT_ROOT")
    data_access_api_url: str = Field(default="http://localhost:8001", validation_alias="DATA_ACCESS_API_URL")
    imaging_api_url: str = Field(default="http://localhost:8002", validation_alias="IMAGING_API_URL")
    trust_internal_service_key_header: str = Field(
        default="X-Trust-Internal-Service-Key", validation_alias="TRUST_INTERNAL_SERVICE_KEY_HEADER"
    )
    trust_internal_service_key: SecretStr = Field(default=SecretStr(""), validation_alias="TRUST_INTERNAL_SERVICE_KEY")
    images_dir: str = Field(default="", validation_alias="IMAGES_DIR")
    net_id: str = Field(default="default", validation_alias="NET_ID")
    uploaded_federated_data_bucket: str | None = Field(default=None, validation_alias="UPLOADED_FEDERATED_DATA_BUCKET")

    @model_validator(mode="after")
    def _decide_env(self) -> FlipSettings:
        try:
            self.env = resolve_env(self.env, self.local_dev)
        except SettingsError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _one_setting_per_pair(self) -> FlipSettings:
        """FLIP's name and ours set one setting: either alone; both set must agree (checked URLs, bucket, key)."""
        url = one_of(
            "FLIP_API_INTERNAL_URL",
            self.flip_api_internal_url,
            "FLIP_HUB_URL",
            self.hub_url,
            same=lambda a, b: a.rstrip("/") == b.rstrip("/"),
        )
        if url is not None:
            name = "FLIP_API_INTERNAL_URL" if not _unset(self.flip_api_internal_url) else "FLIP_HUB_URL"
            try:
                url = check_api_url(url, "hub URL", self.http_hosts)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        self.hub_url = self.flip_api_internal_url = url
        key = one_of(
            "INTERNAL_SERVICE_KEY", self.internal_service_key, "FLIP_HUB_API_KEY", self.hub_api_key, secret=True
        )
        if key is not None and self.internal_service_key_file is not None:
            raise ValueError(
                "INTERNAL_SERVICE_KEY_FILE and a key variable (INTERNAL_SERVICE_KEY or FLIP_HUB_API_KEY) "
                "are both set: give the hub's key one way"
            )
        self.hub_api_key = self.internal_service_key = key
        bucket = one_of(
            "UPLOADED_FEDERATED_DATA_BUCKET",
            self.uploaded_federated_data_bucket,
            "FLIP_MODELS_BUCKET",
            self.models_bucket,
            same=lambda a, b: bucket_of(a) == b,
        )
        if bucket is not None and bucket == self.uploaded_federated_data_bucket:
            bucket = bucket_of(bucket)
        self.models_bucket = bucket or DEFAULT_MODELS_BUCKET
        self.uploaded_federated_data_bucket = f"s3://{self.models_bucket}"
        return self

    @field_validator("site_data", mode="before")
    @classmethod
    def _site_data(cls, value: Any) -> dict[str, SiteData]:
        return check_site_data(value)

    @field_validator("site_env", mode="before")
    @classmethod
    def _site_env(cls, value: Any) -> dict[str, dict[str, str]]:
        return check_site_env(value)

    @field_validator("http_hosts", mode="before")
    @classmethod
    def _http_hosts(cls, value: Any) -> frozenset[str]:
        return check_http_hosts(value)

    @field_validator("net_id")
    @classmethod
    def _net_id(cls, value: str) -> str:
        return check_path_name("NET_ID", value)  # it names a folder (<IMAGES_DIR>/<NET_ID>) and a URL part

    @field_validator("internal_service_key_header", "trust_internal_service_key_header")
    @classmethod
    def _header(cls, value: str) -> str:
        return check_header_name(value)

    @field_validator("uploaded_federated_data_bucket")
    @classmethod
    def _results_bucket(cls, value: str | None) -> str | None:
        if _unset(value):
            return None
        bucket_of(value)
        return value

    @field_validator("models_bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        return None if _unset(value) else check_bucket_name(value)

    @field_validator("hub_url", "flip_api_internal_url")
    @classmethod
    def _hub_url(cls, value: str | None) -> str | None:
        return None if _unset(value) else value  # checked with FLIP_HTTP_HOSTS in _one_setting_per_pair

    @field_validator("hub_timeout")
    @classmethod
    def _hub_timeout(cls, value: float) -> float:
        return check_timeout(value, "hub timeout")

    @field_validator("hub_retries")
    @classmethod
    def _hub_retries(cls, value: int) -> int:
        return check_attempts(value, "hub retries")

    @field_validator("trust_timeout")
    @classmethod
    def _trust_timeout(cls, value: float) -> float:
        return check_timeout(value, "trust timeout")

    @field_validator("trust_retries")
    @classmethod
    def _trust_retries(cls, value: int) -> int:
        return check_attempts(value, "trust retries")

    def transfer(self):
        """boto3 managed-transfer settings from the S3 part settings."""
        from flip.storage.client import transfer_config

        return transfer_config(self.s3_multipart_threshold_mb, self.s3_part_size_mb)

    def dev_data(self) -> DevData:
        """The dev platform's data variables (``DEV_DATAFRAME``, ``DEV_IMAGES_DIR``, ``FLIP_SITE_DATA``)."""
        return DevData(dataframe=self.dev_dataframe, images_dir=self.dev_images_dir, sites=dict(self.site_data))


_SECRET_FIELDS = {"hub_api_key", "internal_service_key", "trust_internal_service_key", "hub_user_token"}


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


#: our variables without the FLIP_ prefix (named after FLIP's, which they complete): not FLIP's settings
_OURS_UNPREFIXED = {"INTERNAL_SERVICE_KEY_FILE"}

#: FLIP's setting names (``FlipConstants.<NAME>``) -> FlipSettings fields; LOCAL_DEV is the resolved decision
FLIP_NAMES: dict[str, str] = {
    info.validation_alias: name
    for name, info in FlipSettings.model_fields.items()
    if isinstance(info.validation_alias, str) and info.validation_alias not in _OURS_UNPREFIXED
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
    value = getattr(settings, FLIP_NAMES[name])
    return FLIP_DEFAULTS[name] if name in FLIP_DEFAULTS and _unset(value) else value


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
