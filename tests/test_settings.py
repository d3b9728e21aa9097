"""Settings: sources and their precedence, one-line errors naming the setting, secrets never shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from runevents.cli import app
from runevents.settings import Settings, SettingsError, load_settings

SECRETS = ("hunter2-db-url", "s3cret-db-password", "sasl-pa55word")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RUNEVENTS_* variable from the machine leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("RUNEVENTS_"):
            monkeypatch.delenv(name)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`runevents` in this process: exit code and everything it printed."""
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_an_option_beats_the_environment_which_beats_the_file_which_beats_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "runevents.toml"
    config.write_text(
        '[runevents]\ntopic = "from-file"\nprojection = "file_projection"\nkafka = "file:9092"\n'
    )
    monkeypatch.setenv("RUNEVENTS_TOPIC", "from-env")
    monkeypatch.setenv("RUNEVENTS_PROJECTION", "env_projection")

    loaded = load_settings({"topic": "from-option", "kafka": None}, config)
    settings = loaded.settings
    assert (settings.topic, settings.projection, settings.kafka, settings.metrics_port) == (
        "from-option",
        "env_projection",
        "file:9092",
        9400,
    )
    assert loaded.origins["topic"] == "option --topic"
    assert loaded.origins["projection"] == "env RUNEVENTS_PROJECTION"
    assert loaded.origins["kafka"] == f"file {config}"
    assert loaded.origins["metrics_port"] == "default"

    monkeypatch.setenv("RUNEVENTS_CONFIG", str(config))  # the file named by the environment
    assert load_settings().settings.kafka == "file:9092"


@pytest.mark.parametrize(
    ("env", "file", "message"),
    [
        ({"RUNEVENTS_METRICS_PORT": "ninety"}, "", "setting metrics_port (env RUNEVENTS_METRICS_PORT): "),
        ({"RUNEVENTS_METRICS_PORT": "70000"}, "", "less than or equal to 65535"),
        ({"RUNEVENTS_KAFKA": "broker-without-port"}, "", "expected host:port[,host:port...]"),
        ({"RUNEVENTS_DATABASE_URL": "mysql://x@h/db"}, "", "expected a postgresql:// or sqlite:// URL"),
        ({"RUNEVENTS_KAFKA_SECURITY_PROTOCOL": "TLS"}, "", "expected 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT'"),
        ({"RUNEVENTS_KAFKA_SSL_CAFILE": "/no/such/ca.pem"}, "", "expected a readable file"),
        ({}, "topic = [1", "not TOML"),
        ({}, 'tpoic = "x"', "unknown setting 'tpoic'"),
        ({}, "metrics_port = 'x'", "setting metrics_port (file "),
    ],
)
def test_a_wrong_setting_is_one_line_naming_it_and_where_it_came_from(
    tmp_path: Path, env: dict[str, str], file: str, message: str
) -> None:
    config = tmp_path / "runevents.toml"
    config.write_text(file)
    code, output = run("--config", str(config), "config", env=env)
    assert code == 1
    assert output.startswith("error: "), output
    assert message in output
    assert len(output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"RUNEVENTS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RUNEVENTS_KAFKA_SASL_USERNAME": "app"},
            "setting kafka_security_protocol is SASL_SSL, which needs kafka_sasl_mechanism, "
            "kafka_sasl_password: RUNEVENTS_KAFKA_SASL_MECHANISM or",
        ),
        ({"RUNEVENTS_KAFKA_SASL_MECHANISM": "PLAIN"}, "expected SASL_PLAINTEXT or SASL_SSL"),
    ],
)
def test_kafka_security_is_checked_by_the_commands_that_reach_kafka_and_only_by_them(
    env: dict[str, str], message: str
) -> None:
    code, output = run("topic", "create", "--kafka", "127.0.0.1:9", env=env)
    assert code == 1
    assert output.startswith("error: ")
    assert message in output
    assert len(output.strip().splitlines()) == 1
    code, output = run("config", env=env)  # the database's commands (and config) do not need it
    assert code == 0, output


def test_a_missing_setting_says_every_way_to_give_it(tmp_path: Path) -> None:
    code, output = run("replay", "--projection", "again", "--kafka", "127.0.0.1:9")
    assert code == 1
    assert output == (
        "error: setting database_url is missing: --database or RUNEVENTS_DATABASE_URL or `database_url` "
        "in the config file (The read tables' database: postgresql://user@host:5432/db (or sqlite:///path))\n"
    )
    code, output = run("--config", str(tmp_path / "nope.toml"), "config")
    assert code == 1
    assert "config file" in output
    assert "cannot read it (No such file or directory)" in output


def test_secrets_are_never_printed_by_config_or_in_errors(tmp_path: Path) -> None:
    config = tmp_path / "runevents.toml"
    config.write_text(f'kafka_sasl_password = "{SECRETS[2]}"\nkafka_sasl_username = "app"\n')
    env = {
        "RUNEVENTS_DATABASE_URL": f"postgresql://app:{SECRETS[0]}@127.0.0.1:9/runs",
        "RUNEVENTS_DATABASE_PASSWORD": SECRETS[1],
        "RUNEVENTS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RUNEVENTS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    }
    code, output = run("--config", str(config), "config", env=env)
    assert code == 0, output
    assert "postgresql://app:***@127.0.0.1:9/runs" in output
    assert "**********" in output
    # Commands that fail reaching the database (port 9: nothing listens) name the failure, not the secret.
    for args in (["db", "upgrade"], ["projection", "history"], ["dead-letters", "list"]):
        code, failed = run("--config", str(config), *args, env=env)
        assert code == 1, failed
        assert failed.startswith("error: "), failed
        output += failed
    for secret in SECRETS:
        assert secret not in output


def test_the_database_url_carries_the_password_and_tls_and_kafka_options_carry_sasl_and_tls(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("the database driver reads it when it connects, not before\n")
    settings = Settings.model_validate(
        {
            "database_url": "postgresql://app@db.internal:5432/runs",
            "database_password": "pw",
            "database_sslmode": "verify-full",
            "database_sslrootcert": str(ca),
            "kafka": "broker-1:9093,broker-2:9093",
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-256",
            "kafka_sasl_username": "app",
            "kafka_sasl_password": "kpw",
        }
    )
    url = make_url(settings.database())
    assert url.password == "pw"
    assert url.query == {"sslmode": "verify-full", "sslrootcert": str(ca)}
    assert settings.kafka_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "app",
        "sasl_plain_password": "kpw",
    }
    assert Settings().kafka_options() == {}
    with pytest.raises(SettingsError, match="setting kafka is missing"):
        Settings().bootstrap_servers()
