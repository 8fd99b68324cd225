"""Typed settings, read from ``CASCADE_*`` environment variables (and an optional ``.env``).

Every setting has a default that runs Cascade on a laptop: a SQLite file in the working
directory and the built-in sandbox for every channel. A bad value fails at start-up with the
setting's name, never later.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cascade.domain.records import JobKindName
from cascade.errors import ConfigError
from cascade.reach import AddressRule, parse_networks

#: the kinds of job an engine runs
JOB_KINDS = tuple(JobKindName)

DEFAULT_DATABASE_URL = "sqlite:///cascade.db"


class Settings(BaseSettings):
    """Cascade's settings; each field is the environment variable ``CASCADE_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="CASCADE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    config_file: Path | None = Field(
        None,
        description="A TOML file with provider settings, e.g. an [smpp] table of SMSC "
        "connections; without one every channel uses the sandbox",
    )
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="sqlite:///path/to/file.db or postgresql://user@host:port/dbname",
    )
    host: str = Field("127.0.0.1", description="Address the HTTP API listens on")
    port: int = Field(3000, ge=1, le=65535, description="Port the HTTP API listens on")
    ssl_certfile: Path | None = Field(
        None,
        description="A PEM certificate (with its chain) to serve HTTPS with, for clients that "
        "only speak https (the official SDKs); needs ssl_keyfile. Without both, plain HTTP",
    )
    ssl_keyfile: Path | None = Field(None, description="The PEM private key of ssl_certfile")
    public_url: str | None = Field(
        None, description="Base URL clients reach this service at (for links in webhooks)"
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="FULL survives power loss; NORMAL survives a killed process but may lose "
        "the last commits on power loss",
    )
    sqlite_cache_mb: int = Field(
        64,
        ge=1,
        le=65_536,
        description="SQLite page cache per connection, in MiB (each process holds two: the "
        "writer's and the reader's); it fills as the database grows and is not given back",
    )
    postgres_pool_size: int = Field(16, ge=1, le=200, description="PostgreSQL connections")
    postgres_command_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a PostgreSQL statement may take before its connection is taken "
        "as lost (StoreUnavailable, and the work is retried)",
    )
    max_body_bytes: int = Field(
        262_144, ge=1024, description="Largest request body accepted (413 above)"
    )
    run_worker: bool = Field(True, description="Run the engine inside `cascade serve`")
    processes: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes `cascade serve` runs: 1 keeps the API and the engine in one; "
        "N > 1 runs the engine in one (with SMPP connections, its webhook deliveries in one more) "
        "and the API in the other N - 1; 0 (the default) is one per core",
    )
    engine_jobs: str = Field(
        "all",
        description="The jobs this process's engine runs: all, or a comma list of "
        f"{', '.join(JOB_KINDS)}. Without send it opens no channel connections, so e.g. "
        "`cascade worker --jobs webhook` delivers webhooks beside a serve that runs the rest",
    )
    report_horizon_seconds: float = Field(
        72 * 3600.0,
        gt=0,
        description="Seconds after the last step starts when the final report goes regardless",
    )
    job_lease_seconds: float = Field(
        30.0, gt=0, description="How long a worker holds a job before another may take it over"
    )
    worker_batch_size: int = Field(200, ge=1, le=10_000, description="Jobs claimed at once")
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="How long one webhook attempt may take"
    )
    webhook_allow_private: bool = Field(
        True,
        description="Whether webhooks may go to loopback, private, link-local and other "
        "addresses that are not public. Set it false where tenants you do not control set "
        "webhook URLs: a webhook whose host resolves to no public address is then a dead "
        "letter at once, and no connection is made",
    )
    webhook_allowed_networks: str = Field(
        "",
        description="Comma-separated networks (10.1.2.0/24) or addresses that webhooks may "
        "reach even when private addresses are not allowed: your own receivers",
    )
    sandbox_speed: float = Field(
        1.0, gt=0, description="Sandbox receipts come this many times faster than documented"
    )
    # Retention and secrets
    credentials_file: Path | None = Field(
        None,
        description="Where the first start writes the new account's credentials (created "
        "mode 0600, never overwritten); default: beside the SQLite database "
        "(cascade.db.credentials), or cascade.credentials in the working directory",
    )
    channel_key: SecretStr | None = Field(
        None,
        description="The keys that seal linked channels' credentials in the database: a "
        "comma-separated list of Fernet keys (`cascade channel key` makes one); the first "
        "seals, every one opens, so a new key goes first and the old one after it. Without "
        "it no channel can be linked",
    )
    idempotency_ttl_seconds: float = Field(
        24 * 3600.0,
        gt=0,
        description="How long an Idempotency-Key deduplicates; a request naming an older key "
        "is a new request, and older keys are deleted",
    )
    retention_days: float = Field(
        30.0,
        ge=0,
        description="Finished workflows (with their messages, timelines, webhooks and "
        "attempts), settled inbound webhooks and unmatched receipts older than this are "
        "deleted by the engine; 0 keeps them forever",
    )
    retention_interval_seconds: float = Field(
        300.0, gt=0, description="Seconds between two retention sweeps"
    )
    retention_batch_size: int = Field(
        200, ge=1, le=10_000, description="Rows (workflows) a retention transaction deletes"
    )

    # HTTP connection limits
    http_head_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="A connection must send a complete request head this soon after it opens "
        "(or after the first byte of its next request), or it is closed",
    )
    http_keepalive_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="An idle keep-alive connection is closed after this long without a request",
    )
    http_max_head_bytes: int = Field(
        16_384,
        ge=1024,
        le=1_048_576,
        description="Largest request head (request line and headers) accepted (431 above)",
    )
    http_max_connections: int = Field(
        4096,
        ge=1,
        description="Open client connections at most (further capped by the file limit); at "
        "the cap a new connection closes the oldest one with no request in progress",
    )
    # Linked channels: Messenger and WhatsApp over the Graph API, Viber over its Bot API
    graph_base_url: str = Field(
        "https://graph.facebook.com",
        description="Where the Graph API (Messenger Send API, WhatsApp Cloud API) is reached",
    )
    graph_api_version: str = Field(
        "v25.0",
        pattern=r"^v[0-9]+\.[0-9]+$",
        description="The Graph API version in each request's path, e.g. v25.0",
    )
    viber_base_url: str = Field(
        "https://chatapi.viber.com", description="Where the Viber Bot API is reached"
    )
    channel_http_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=120,
        description="How long one request to Graph or Viber may take to connect, to send and "
        "to be answered, each (a send not answered in time may have gone out and is not resent)",
    )
    channel_http_max_connections: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Connections the Messenger, WhatsApp and Viber adapters keep open at most, "
        "together; a send that finds none free within the timeout is retried later",
    )
    channel_link_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a send reuses a channel link it read (a removed link stops "
        "being used within this time); 0 reads the store on every send",
    )
    access_log: bool = Field(
        True,
        description="Log one line per HTTP request (method, path, status, duration, account, "
        "request id); false turns it off",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    log_format: Literal["console", "json"] = Field("console")

    @field_validator("graph_base_url", "viber_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def webhook_reach(self) -> AddressRule:
        """Where webhooks may connect (``webhook_allow_private``, ``webhook_allowed_networks``)."""
        return AddressRule(
            allow_private=self.webhook_allow_private,
            allowed_networks=parse_networks(self.webhook_allowed_networks),
        )

    @field_validator("engine_jobs")
    @classmethod
    def _known_job_kinds(cls, value: str) -> str:
        return engine_jobs(value)

    @property
    def job_kinds(self) -> frozenset[JobKindName] | None:
        """The job kinds of ``engine_jobs`` (None: all)."""
        if self.engine_jobs == "all":
            return None
        return frozenset(JobKindName(name) for name in self.engine_jobs.split(","))


def engine_jobs(value: str) -> str:
    """``all`` or a comma list of known job kinds, tidied; ValueError names what is wrong."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if names == ["all"]:
        return "all"
    unknown = sorted(set(names) - set(JOB_KINDS))
    if unknown or not names:
        raise ValueError(
            f"unknown job kind(s) {', '.join(unknown) or '(none given)'}: expected all or a "
            f"comma list of {', '.join(JOB_KINDS)}"
        )
    return ",".join(dict.fromkeys(names))


def read_config_file(path: Path) -> dict[str, Any]:
    """The tables of the provider settings file; ConfigError when it cannot be read."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc}") from exc
