"""Deployment settings, read from the environment and `.env` (pydantic-settings).

Package-specific variables carry the `MUSICREC_` prefix (e.g. `MUSICREC_DATA_DIR`); the S3
variables keep their customary names (`S3_BUCKET_NAME`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `S3_ENDPOINT_URL`). Nothing is read at import time: call
`get_settings()`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import get_args
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: the longest history one event-service call returns (`/get_events`, `/get_events_batch`),
#: and so the deepest `exclude_events_max` the recommendation service may ask for: one
#: bound for both, or a deeper setting would get a 422 on every events call (each answer
#: silently the offline list)
EVENTS_K_MAX = 10_000

#: the log levels `Settings.log_level` accepts (`MUSICREC_LOG_LEVEL`, any case)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: the header of `/ready` that carries `Settings.serve_instance`
INSTANCE_HEADER = "X-Musicrec-Instance"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MUSICREC_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- paths ---
    data_dir: Path = Field(Path("data"), description="Raw input files (Yandex Music schema)")
    artifacts_dir: Path = Field(Path("recsys"), description="Generated artifacts")
    log_file: Path = Field(Path("execution_log.txt"), description="Pipeline log file")
    log_level: str = Field(
        "INFO",
        description="Level of the pipeline's and the services' logs (and, when set, of "
        "uvicorn's under a plain `uvicorn module:app`)",
    )
    config_file: Path | None = Field(None, description="Pipeline parameters (TOML/YAML)")

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value: object) -> object:
        """One of Python's level names, any case: checked with the other settings, so a
        misspelt level stops every command and service with the one-line settings error
        (it was noticed only by the pipeline's logging, or at a service's start-up as a
        traceback, and `config` and the verifier ignored it)."""
        if isinstance(value, str):
            level = value.strip().upper()
            if level not in LOG_LEVELS:
                raise ValueError(f"unknown log level {value!r}; one of {', '.join(LOG_LEVELS)}")
            return level
        return value

    @field_validator("config_file", mode="before")
    @classmethod
    def _empty_config_file_is_none(cls, value: object) -> object:
        """`MUSICREC_CONFIG_FILE=` (empty, as in a copied `.env`) means no file, not `.`."""
        return None if isinstance(value, str) and not value.strip() else value

    # --- services ---
    host: str = Field("127.0.0.1", description="Address the services bind to")
    recs_port: int = Field(8000, ge=1, le=65535, description="Port of the recommendation service")
    recs_workers: int = Field(
        1, ge=1, le=16, description="uvicorn worker processes of the recommendation service"
    )
    serve_instance: str | None = Field(
        None,
        description="Set by `musicrec serve` for the services it starts: `/ready` echoes it "
        "in the X-Musicrec-Instance header, so serve takes only its own children's answers "
        "(not another server's that took the port)",
    )
    fast_path: bool = Field(
        True,
        description="Serve plain `?user_id=&k=` / `?track_id=&k=` requests of "
        "/recommendations, /recommendations_offline and /similar_tracks without FastAPI's "
        "routing and validation (same answers; musicrec.fast_path)",
    )
    similar_port: int = Field(
        8010, ge=1, le=65535, description="Port of the similar-tracks service"
    )
    similar_workers: int = Field(
        1, ge=1, le=16, description="uvicorn worker processes of the similar-tracks service"
    )
    events_port: int = Field(8020, ge=1, le=65535, description="Port of the event service")
    recs_url: str | None = Field(
        None, description="Default: http://{host}:{recs_port} (where verification looks)"
    )
    similar_url: str | None = Field(None, description="Default: http://{host}:{similar_port}")
    events_url: str | None = Field(None, description="Default: http://{host}:{events_port}")
    event_db_path: Path = Field(Path("data/events.sqlite3"), description="Event history DB")
    events_api_key: SecretStr | None = Field(
        None,
        description="If set, the event service's routes (writes, reads, /stats; not the "
        "probes or /metrics) need it as X-API-Key",
    )

    @field_validator("recs_url", "similar_url", "events_url", mode="before")
    @classmethod
    def _http_url(cls, value: object) -> object:
        """Empty (as in a copied `.env`) means unset: the URL from host and port."""
        if isinstance(value, str):
            return check_base_url(value) if value.strip() else None
        return value

    @field_validator("events_api_key")
    @classmethod
    def _sendable_key(cls, value: SecretStr | None) -> SecretStr | None:
        """Printable ASCII without spaces: HTTP carries header values as bytes that servers
        decode as latin-1, so a key with other characters could never be sent as
        configured (checked here, before any service starts; the key is never echoed)."""
        if value is not None and not sendable_header_value(value.get_secret_value()):
            raise ValueError(
                "must be printable ASCII without spaces (HTTP header values are bytes; "
                "other characters cannot be sent as configured)"
            )
        return value

    events_cache_users: int = Field(
        50_000, ge=0, description="Users whose latest events the event service keeps in memory"
    )
    events_cache_events: int = Field(
        5_000_000,
        ge=100,
        description="Events the event service keeps in memory, all users together (about 12 "
        "bytes each)",
    )
    events_key_ttl_s: float = Field(
        86_400.0,
        gt=0,
        description="How long the event service remembers an /add_event Idempotency-Key: a "
        "retry within it stores nothing new",
    )
    online_history_k: int = Field(5, ge=1, le=100, description="Latest events used online")
    exclude_events_max: int = Field(
        1_000,
        ge=1,
        le=EVENTS_K_MAX,
        description="Latest events of the event service that /recommendations and "
        "/recommendations_online never recommend again (read in the one events call of each "
        "request; from the event service's memory once it holds the user that deep). 1,000 "
        "listens are over two days of non-stop listening: with a daily pipeline run, every "
        "listen since the fit",
    )
    online_similar_k: int = Field(20, ge=1, le=200, description="Similar tracks per event")
    upstream_timeout_s: float = Field(0.05, gt=0, description="Per-call inter-service timeout")
    request_budget_s: float = Field(0.2, gt=0, description="Time budget of /recommendations")
    fetch_artifacts_from_s3: bool = False
    fetch_wait_s: float = Field(
        300.0,
        ge=0,
        description="How long a service's start-up fetch waits for an upload under way to "
        "finish (retrying every few seconds) before it gives up",
    )

    # --- S3 (customary variable names, no prefix) ---
    s3_bucket_name: str | None = Field(
        None, validation_alias=AliasChoices("S3_BUCKET_NAME", "MUSICREC_S3_BUCKET_NAME")
    )
    aws_access_key_id: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID", "MUSICREC_AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY", "MUSICREC_AWS_SECRET_ACCESS_KEY"),
    )
    s3_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("S3_ENDPOINT_URL", "MUSICREC_S3_ENDPOINT_URL")
    )
    s3_region: str = Field(
        "us-east-1", validation_alias=AliasChoices("AWS_DEFAULT_REGION", "MUSICREC_S3_REGION")
    )
    s3_prefix: str = Field("", description="Key prefix in the bucket (before recsys/...)")

    @property
    def recs_base_url(self) -> str:
        return self.recs_url or f"http://{connect_host(self.host)}:{self.recs_port}"

    @property
    def events_auth_headers(self) -> dict[str, str]:
        """The header a client of the event service sends: `X-API-Key` when a key is set."""
        key = self.events_api_key
        return {"X-API-Key": key.get_secret_value()} if key and key.get_secret_value() else {}

    @property
    def similar_base_url(self) -> str:
        return self.similar_url or f"http://{connect_host(self.host)}:{self.similar_port}"

    @property
    def events_base_url(self) -> str:
        return self.events_url or f"http://{connect_host(self.host)}:{self.events_port}"


def check_base_url(url: str) -> str:
    """`url` if a client can call it: an `http` or `https` scheme (any case) and a host;
    else `ValueError` saying so."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "not a base URL: it needs http:// or https:// and a host (e.g. http://127.0.0.1:8000)"
        )
    return url


def connect_host(host: str) -> str:
    """The address to connect to for a bind address: `0.0.0.0` -> `127.0.0.1`, `::` ->
    `[::1]`, other IPv6 addresses in brackets (as a URL needs them)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def sendable_header_value(value: str) -> bool:
    """Whether `value` is printable ASCII without spaces: what an HTTP header carries as
    configured (servers decode header bytes as latin-1)."""
    return all(" " < c < "\x7f" for c in value)


#: fields whose value an error message must not show: those typed `SecretStr`
_SECRET_FIELDS = frozenset(
    name
    for name, info in Settings.model_fields.items()
    if SecretStr in (info.annotation, *get_args(info.annotation))
)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once, on first call). A value that fails its check
    raises `ConfigError` naming the environment variable, the value (never a secret's) and
    the rule, instead of pydantic's traceback-sized report."""
    try:
        return Settings()
    except ValidationError as exc:
        from musicrec.errors import ConfigError

        raise ConfigError(settings_errors(exc)) from None


def settings_errors(exc: ValidationError) -> str:
    """One line per invalid setting: `MUSICREC_RECS_PORT='abc': Input should be a valid
    integer` (secrets' values left out)."""
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        # a field read under an alias (`AWS_ACCESS_KEY_ID`) is reported under it
        name = field if field.isupper() else f"MUSICREC_{field.upper()}"
        secret = field.lower().removeprefix("musicrec_") in _SECRET_FIELDS
        shown = "" if secret else f"={err.get('input')!r:.60}"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{name}{shown}: {msg}")
    return "invalid settings (environment or .env): " + "; ".join(parts)
