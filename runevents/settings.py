"""Settings: one class, read from command-line options, `RUNEVENTS_*` variables and a TOML file.

Precedence, highest first: an option given on the command line, the environment, the TOML file
(`--config PATH` or `RUNEVENTS_CONFIG`), the default. `Settings.origins` says where each value
came from, for `runevents config`. Secrets (the database and SASL passwords) are `SecretStr`: they
print as `**********`, and the database URL is shown with its passwords masked; nothing here logs them.
A `RUNEVENTS_*` variable that is no setting (a misspelling) is named by
`runevents.cli.environment.unknown_variables`, as a misspelled key in the file is an error.

Over 400 lines: one model of every setting with its checks, kept whole so that `runevents config`, the
TOML file and the variables are read and listed from one place.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlencode

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from runevents.bus.names import DEFAULT_PROJECTION, DEFAULT_TOPIC
from runevents.crypto.keyring import Keyring, KeyringError, load_keyring, parse_keyring
from runevents.errors import RunEventsError, UnsupportedDatabaseError
from runevents.lifecycle.blob_urls import (
    BUS_BLOB_SCHEMA,
    InvalidBlobUrlError,
    open_blob_store,
    parse_blob_url,
)
from runevents.lifecycle.retention import parse_policy
from runevents.masking import mask_secrets
from runevents.names import InvalidNameError, check_identifier, check_topic
from runevents.tables.sql import check_database_url

if TYPE_CHECKING:
    from runevents.bus.store import BusRunEventStore

ENV_PREFIX: Final = "RUNEVENTS_"
CONFIG_ENV: Final = "RUNEVENTS_CONFIG"
DEFAULT_METRICS_PORT: Final = 9400
DEFAULT_METRICS_HOST: Final = "127.0.0.1"
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class SettingsError(RunEventsError):
    """A setting that is missing or wrong; the message names it and says what it expected."""


class Settings(BaseSettings):
    """Everything a `runevents` process is configured with."""

    # Values come from `load_settings`, which merges the sources itself to know each one's origin.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    database_url: str | None = Field(
        default=None,
        description="The read tables' database: postgresql://user@host:5432/db (or sqlite:///path)",
    )
    database_password: SecretStr | None = Field(
        default=None, description="The database password, if not in the URL (it replaces the URL's)"
    )
    database_sslmode: SslMode | None = Field(default=None, description="libpq's sslmode for PostgreSQL")
    database_sslrootcert: Path | None = Field(
        default=None, description="CA certificate the server's is checked against"
    )
    database_sslcert: Path | None = Field(
        default=None, description="Client certificate, for certificate authentication"
    )
    database_sslkey: Path | None = Field(default=None, description="The client certificate's key")
    kafka: str | None = Field(default=None, description="Kafka bootstrap servers: host:port[,host:port...]")
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="How to reach the brokers"
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        default=None, description="SASL mechanism (SASL_* protocols)"
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password")
    kafka_ssl_cafile: Path | None = Field(
        default=None, description="CA certificate the brokers' are checked against"
    )
    kafka_ssl_certfile: Path | None = Field(default=None, description="Client certificate (mutual TLS)")
    kafka_ssl_keyfile: Path | None = Field(default=None, description="The client certificate's key")
    kafka_ssl_check_hostname: bool = Field(
        default=True, description="Check the brokers' certificates name them"
    )
    topic: str = Field(default=DEFAULT_TOPIC, description="The run-events topic")
    projection: str = Field(default=DEFAULT_PROJECTION, description="The projection a projector applies")
    schema_name: str | None = Field(default=None, description="PostgreSQL schema of the projection's tables")
    metrics_port: int = Field(
        default=DEFAULT_METRICS_PORT,
        ge=0,
        le=65535,
        description="Projector's /metrics and /healthz port (0: off)",
    )
    # Local only unless set: /metrics tells anyone who can reach it the topic, lag and partitions.
    metrics_host: str = Field(
        default=DEFAULT_METRICS_HOST,
        description="Address the metrics port listens on (0.0.0.0: every interface, as in a pod)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level (any case)"
    )
    retention: str = Field(
        default="forever",
        description="Default policy of `runevents retention apply`: max_age=90d; trace: max_age=7d, ...",
    )
    blobs: str | None = Field(
        default=None,
        description="Where a bus store keeps cut contents whole: table, file:///dir or s3://bucket/prefix/",
    )

    kek: SecretStr | None = Field(
        default=None,
        description="KEKs that wrap the bus's data keys: id:base64 entries, the first wraps new keys",
    )
    kek_file: Path | None = Field(default=None, description="A file holding the KEKs (as RUNEVENTS_KEK)")

    @field_validator("kek")
    @classmethod
    def _check_kek(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_keyring(value.get_secret_value(), source="the value")  # its message shows no key
        return value

    def keyring(self) -> Keyring | None:
        """The KEKs of `kek` or `kek_file`, if either is set."""
        try:
            return load_keyring(None if self.kek is None else self.kek.get_secret_value(), self.kek_file)
        except KeyringError as error:
            raise SettingsError(str(error)) from None

    @field_validator("blobs")
    @classmethod
    def _check_blobs(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parse_blob_url(value)
        except InvalidBlobUrlError as error:
            raise ValueError(error.problem) from None  # the problem only: a message never shows a value
        return value

    @field_validator("retention")
    @classmethod
    def _check_retention(cls, value: str) -> str:
        return parse_policy(value).text()  # a bad one is an InvalidRetentionPolicyError: a ValueError

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            check_database_url(value)  # the same rule the engine applies, so refused here, not mid-run
        except UnsupportedDatabaseError:
            scheme = value.partition("://")[0]
            if "://" in value and scheme.replace("+", "").isalnum() and len(scheme) <= 32:
                raise ValueError(f"expected a postgresql:// or sqlite:// URL, got {scheme}://") from None
            raise ValueError(
                "expected a database URL such as postgresql://user@host:5432/db or sqlite:///path"
            ) from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        return _named(check_topic, value)

    @field_validator("projection")
    @classmethod
    def _check_projection(cls, value: str) -> str:
        return _named(lambda name: check_identifier("projection", name), value)

    @field_validator("schema_name")
    @classmethod
    def _check_schema_name(cls, value: str | None) -> str | None:
        return None if value is None else _named(lambda name: check_identifier("schema", name), value)

    @field_validator("kafka")
    @classmethod
    def _check_kafka(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return value

    @field_validator(
        "database_sslrootcert",
        "database_sslcert",
        "database_sslkey",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "kek_file",
    )
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"expected a readable file, but {value} is not one")
        return value

    def require(self, *names: str) -> None:
        """Raise `SettingsError` naming the first of `names` that has no value."""
        for name in names:
            if getattr(self, name) is None:
                raise SettingsError(f"setting {name} is missing: {_how_to_set(name)} ({_description(name)})")

    def database(self) -> str:
        """The database URL to connect with: the password and the TLS settings put in (a secret)."""
        self.require("database_url")
        assert self.database_url is not None
        url = make_url(self.database_url)
        if self.database_password is not None:
            url = url.set(password=self.database_password.get_secret_value())
        tls = {
            key: str(value)
            for key, value in (
                ("sslmode", self.database_sslmode),
                ("sslrootcert", self.database_sslrootcert),
                ("sslcert", self.database_sslcert),
                ("sslkey", self.database_sslkey),
            )
            if value is not None
        }
        if tls:
            url = url.update_query_string(urlencode(tls), append=True)
        return url.render_as_string(hide_password=False)

    def shown_database(self) -> str | None:
        """The database URL as it may be printed: every password it carries masked."""
        if self.database_url is None:
            return None
        return mask_secrets(make_url(self.database_url).render_as_string(hide_password=True))

    def secrets(self) -> list[str]:
        """The secret values these settings hold (passwords in the URL included), to mask in messages."""
        found = [
            secret.get_secret_value()
            for secret in (self.database_password, self.kafka_sasl_password, self.kek)
            if secret is not None
        ]
        if self.database_url is not None:
            found += url_secrets(self.database_url)
        return [secret for secret in found if secret]

    def bootstrap_servers(self) -> str:
        """The Kafka bootstrap servers (required)."""
        self.require("kafka")
        assert self.kafka is not None
        return self.kafka

    def _check_kafka_security(self) -> None:
        # Checked when Kafka is used, not on load: `db upgrade` needs no SASL password.
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_"):
            missing = [
                name
                for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise SettingsError(
                    f"setting kafka_security_protocol is {protocol}, which needs {', '.join(missing)}: "
                    f"{'; '.join(_how_to_set(name) for name in missing)}"
                )
        elif self.kafka_sasl_mechanism is not None:
            raise SettingsError(
                f"setting kafka_sasl_mechanism is set, but kafka_security_protocol is {protocol}: "
                "expected SASL_PLAINTEXT or SASL_SSL"
            )

    def kafka_options(self) -> dict[str, Any]:
        """aiokafka client options for the security settings (empty for PLAINTEXT)."""
        self._check_kafka_security()
        options: dict[str, Any] = {}
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return options
        options["security_protocol"] = protocol
        if protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
            )
            context.check_hostname = self.kafka_ssl_check_hostname
            if self.kafka_ssl_certfile is not None:
                context.load_cert_chain(
                    str(self.kafka_ssl_certfile),
                    str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
                )
            options["ssl_context"] = context
        if protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        return options

    def bus_store(self, **options: Any) -> BusRunEventStore:
        """A bus store on these settings' servers, topic, projection, schema, blobs, TLS and SASL."""
        from runevents.bus.store import BusRunEventStore  # aiokafka and asyncpg load only for the bus

        producer_options = {"client_options": self.kafka_options(), **options.pop("producer_options", {})}
        store = BusRunEventStore(
            self.bootstrap_servers(),
            self.database(),
            topic=self.topic,
            projection=self.projection,
            schema=self.schema_name,
            producer_options=producer_options,
            **{"keyring": self.keyring(), **options},
        )
        if self.blobs is not None and options.get("blobs") is None:
            # Opened once the store is: the blobs table is read through the store's own engine (one
            # pool, disposed with the store), outside the projection's schema.
            store._blobs = open_blob_store(self.blobs, engine=store._engine, schema=BUS_BLOB_SCHEMA)
        return store

    def shown(self) -> dict[str, str]:
        """Every setting as `runevents config` prints it: secrets masked, the URL's passwords too."""
        shown = {}
        secrets = self.secrets()
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "database_url":
                value = self.shown_database()
            shown[name] = "-" if value is None else mask_secrets(str(value), *secrets)
        return shown


# Query parameters of a database URL whose values are secrets (libpq's).
_URL_SECRETS: Final = ("password", "sslpassword")


def url_secrets(url: str) -> list[str]:
    """The passwords a database URL carries (its userinfo's, its query's); none if it is no URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return []
    found = [parsed.password or "", *(str(parsed.query.get(key, "")) for key in _URL_SECRETS)]
    return [secret for secret in found if secret]


def _named(check: Callable[[str], str], value: str) -> str:
    """`value` if `check` (a runevents.names rule) takes it, else the ValueError pydantic reports."""
    try:
        return check(value)
    except InvalidNameError as error:
        raise ValueError(str(error)) from None


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _description(name: str) -> str:
    return Settings.model_fields[name].description or name


def _how_to_set(name: str) -> str:
    option = _OPTIONS.get(name)
    where = f"--{option} or " if option else ""
    return f"{where}{_env_name(name)} or `{name}` in the config file"


# The command-line options that stand for settings (the others are set by environment or file).
_OPTIONS: Final = {
    "database_url": "database",
    "kafka": "kafka",
    "topic": "topic",
    "schema_name": "schema",
    "projection": "projection",
    "metrics_port": "metrics-port",
    "metrics_host": "metrics-host",
}


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise SettingsError(f"config file {path}: cannot read it ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"config file {path}: not TOML ({error})") from None
    # Either top-level keys, or a [runevents] table (for a file shared with other tools).
    values = document.get("runevents", document)
    if not isinstance(values, dict):
        raise SettingsError(f"config file {path}: [runevents] must be a table")
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise SettingsError(f"config file {path}: unknown setting {unknown[0]!r}")
    return values


class Loaded:
    """Settings and where each value came from."""

    def __init__(self, settings: Settings, origins: dict[str, str]) -> None:
        self.settings = settings
        self.origins = origins


def load_settings(options: Mapping[str, Any] | None = None, config_file: Path | None = None) -> Loaded:
    """Settings from options given on the command line (None: not given), the environment and a file."""
    path = config_file
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    from_file = _read_file(path) if path is not None else {}
    from_env = EnvSettingsSource(Settings)()
    given = {name: value for name, value in (options or {}).items() if value is not None}
    origins = {}
    for name in Settings.model_fields:
        if name in given:
            origins[name] = f"option --{_OPTIONS.get(name, name.replace('_', '-'))}"
        elif name in from_env:
            origins[name] = f"env {_env_name(name)}"
        elif name in from_file:
            origins[name] = f"file {path}"
        else:
            origins[name] = "default"
    try:
        # Validated from the merged values alone: the sources were read above, in precedence order.
        settings = Settings.model_validate({**from_file, **from_env, **given})
    except ValidationError as error:
        raise SettingsError(_first_problem(error, origins)) from None
    return Loaded(settings, origins)


def _first_problem(error: ValidationError, origins: Mapping[str, str]) -> str:
    """One line: the setting, where its value came from, and what was expected (never the value)."""
    problem = error.errors()[0]
    name = str(problem["loc"][0]) if problem["loc"] else ""
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "literal_error":
        message = "expected " + str(problem.get("ctx", {}).get("expected", message))
    if not name:
        return f"settings: {message}"
    return f"setting {name} ({origins.get(name, 'default')}): {message}"
