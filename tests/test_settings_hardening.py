"""Safe defaults and honest help: the metrics port stays local unless told, a misspelled variable is
named, log levels take any case, log lines are masked, and every --help page says what it takes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final

import pytest
import typer
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from runevents.cli import app
from runevents.cli.environment import NOT_SETTINGS, unknown_variables
from runevents.devstack.postgres import free_port
from runevents.settings import SettingsError, load_settings
from runevents.tables.migrate import upgrade_async

ROOT: Final = Path(__file__).resolve().parent.parent
PLANTED: Final = "Pl4ntedS3cretXyz"
# A RUNEVENTS_* name, whole (not the prefix of a family such as `RUNEVENTS_TEST_`).
NAME: Final = re.compile(r"RUNEVENTS_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_])")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RUNEVENTS_* variable from the machine reaches these tests."""
    for name in list(os.environ):
        if name.upper().startswith("RUNEVENTS_"):
            monkeypatch.delenv(name)


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`runevents ARGS` in this process, wide enough that no help line wraps."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250", **(env or {})})
    return result.exit_code, result.output


# -- the metrics port ------------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket of this machine listens on `port` at (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


async def metrics_address(kafka: str, database: str, level: str, *options: str) -> tuple[set[str], str]:
    """Where a real `runevents project` listens for /metrics, and everything it printed."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "runevents.cli", "project", "--kafka", kafka, "--database", database),
        *("--topic", f"hardening-{port}", "--metrics-port", str(port), *options),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "RUNEVENTS_LOG_LEVEL": level},
    )
    try:
        deadline = time.monotonic() + 60
        while not (addresses := listening_addresses(port)) and time.monotonic() < deadline:
            assert process.returncode is None
            await asyncio.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return addresses, output.decode()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp (Linux)")
async def test_the_metrics_port_listens_on_the_loopback_unless_told_otherwise(
    kafka_bootstrap: str, pg_database: str
) -> None:
    await upgrade_async(pg_database)
    # The password is planted in the URL's query (the test server trusts the host, so it connects).
    database = make_url(pg_database).update_query_dict({"password": PLANTED}).render_as_string(False)
    # Levels in lower case, taken both ways: "warning" hides the INFO line, "info" shows it.
    addresses, output = await metrics_address(kafka_bootstrap, database, "warning")
    assert addresses == {"127.0.0.1"}, output
    assert "metrics and health" not in output
    assert PLANTED not in output
    addresses, output = await metrics_address(kafka_bootstrap, database, "info", "--metrics-host", "0.0.0.0")
    assert addresses == {"0.0.0.0"}, output
    assert "INFO runevents.metrics: metrics and health on http://0.0.0.0:" in output
    assert PLANTED not in output


def test_the_default_metrics_host_is_the_loopback_and_the_deploy_files_open_it() -> None:
    assert load_settings().settings.metrics_host == "127.0.0.1"
    configmap = yaml.safe_load((ROOT / "deploy/k8s/configmap.yaml").read_text())
    assert configmap["data"]["RUNEVENTS_METRICS_HOST"] == "0.0.0.0"
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    for name, service in compose["services"].items():
        if service.get("command") == ["project"]:
            assert service["environment"]["RUNEVENTS_METRICS_HOST"] == "0.0.0.0", name


def test_log_lines_of_a_long_job_are_masked() -> None:
    # In a process of its own: pytest's capture already configured this one's logging.
    code = (
        "import logging\n"
        "from runevents.cli.support import log_to_stderr\n"
        "log_to_stderr('info')\n"
        "log = logging.getLogger('runevents.bus.projector')\n"
        f"log.warning('retrying postgresql://carol:{PLANTED}1@db/runs and db?sslpassword={PLANTED}2')\n"
        "try:\n"
        f"    raise OSError('kafka://b:9092/t?database=postgresql%3A%2F%2Fc%3A{PLANTED}3%40db')\n"
        "except OSError:\n"
        "    log.exception('failed at %s', ('127.0.0.1', 5432))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "WARNING runevents.bus.projector: retrying postgresql://carol:***@db" in done.stderr
    assert "failed at 127.0.0.1:5432" in done.stderr  # no tuple repr
    assert PLANTED not in done.stderr, done.stderr


# -- settings --------------------------------------------------------------------------------------


def test_a_misspelled_variable_is_named_with_the_closest_setting() -> None:
    code, output = invoke("config", env={"RUNEVENTS_TOPCI": "runs", "RUNEVENTS_METRIC_HOST": "0.0.0.0"})
    assert code == 0, output
    warnings = [line for line in output.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: RUNEVENTS_METRIC_HOST is not a runevents setting and is ignored "
        "(did you mean RUNEVENTS_METRICS_HOST?)",
        "warning: RUNEVENTS_TOPCI is not a runevents setting and is ignored (did you mean RUNEVENTS_TOPIC?)",
    ]
    assert unknown_variables({"RUNEVENTS_QQQ": "1"}) == [
        "RUNEVENTS_QQQ is not a runevents setting and is ignored (`runevents config` lists the settings)"
    ]


def test_variables_of_the_tests_and_benchmarks_and_every_setting_get_no_warning(tmp_path: Path) -> None:
    config = tmp_path / "runevents.toml"
    config.write_text("")
    env = {
        "RUNEVENTS_CONFIG": str(config),
        "RUNEVENTS_TEST_DATABASE_URL": "x",
        "RUNEVENTS_BENCH_KAFKA": "x",
        "RUNEVENTS_FAULT_SEED": "1",
        "RUNEVENTS_WRITE_QUERY_PLANS": "1",
        "runevents_topic": "runs",  # read case-insensitively, so a setting
    }
    code, output = invoke("config", env=env)
    assert code == 0, output
    assert "warning" not in output


def test_every_runevents_variable_the_repository_uses_is_a_setting_or_known_not_to_be_one() -> None:
    # What the code, the tests, the benchmarks, the Makefile and deploy/ read or set (not the docs,
    # whose examples misspell names on purpose, nor this file).
    names: set[str] = set()
    for folder in ("runevents", "tests", "bench", "deploy"):
        for path in (ROOT / folder).rglob("*"):
            if (
                path.is_file()
                and path.suffix in (".py", ".yaml", ".yml", "")
                and path.name != Path(__file__).name
            ):
                names |= set(NAME.findall(path.read_text(errors="ignore")))
    names |= set(NAME.findall((ROOT / "Makefile").read_text()))
    assert {"RUNEVENTS_DATABASE_URL", "RUNEVENTS_TEST_KAFKA", *NOT_SETTINGS} <= names
    assert unknown_variables(dict.fromkeys(names, "x")) == []


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), ("Warning", "WARNING"), ("ERROR", "ERROR")])
def test_log_levels_take_any_case(monkeypatch: pytest.MonkeyPatch, given: str, level: str) -> None:
    monkeypatch.setenv("RUNEVENTS_LOG_LEVEL", given)
    assert load_settings().settings.log_level == level


def test_a_log_level_that_is_none_is_one_line_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNEVENTS_LOG_LEVEL", "loud")
    with pytest.raises(SettingsError, match=r"^setting log_level \(env RUNEVENTS_LOG_LEVEL\): expected"):
        load_settings()


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("topic", "..", "topic name '..'"),
        ("projection", "Main", "projection name 'Main'"),
        ("schema_name", "pg_catalog", "reserved by PostgreSQL"),
    ],
)
def test_a_name_setting_follows_the_naming_rule_wherever_it_comes_from(
    tmp_path: Path, setting: str, value: str, problem: str
) -> None:
    config = tmp_path / "runevents.toml"
    config.write_text(f'{setting} = "{value}"\n')
    with pytest.raises(SettingsError, match=f"setting {setting} \\(file .*\\): .*{re.escape(problem)}"):
        load_settings({}, config)


# -- help pages ------------------------------------------------------------------------------------


def commands() -> list[tuple[list[str], Any]]:
    """Every command of the app, with the words that name it."""
    found = []

    def walk(command: Any, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, [*path, name])
        else:
            found.append((path, command))

    walk(typer.main.get_command(app), [])
    return found


# Options that stand for a setting wherever a command takes them.
SETTING_OPTIONS: Final = {
    "--database": "RUNEVENTS_DATABASE_URL",
    "--kafka": "RUNEVENTS_KAFKA",
    "--metrics-port": "RUNEVENTS_METRICS_PORT",
    "--metrics-host": "RUNEVENTS_METRICS_HOST",
}


def test_every_option_that_stands_for_a_setting_names_its_variable() -> None:
    for path, command in commands():
        for param in command.params:
            help_text = getattr(param, "help", None) or ""
            for option, variable in SETTING_OPTIONS.items():
                if option in param.opts:
                    assert f"env {variable}" in help_text, (path, param.opts)
            named = re.search(r"\[setting (\w+)", help_text)
            if named:
                assert f"env RUNEVENTS_{named.group(1).upper()}" in help_text, (path, param.opts)
    project = {tuple(path): command for path, command in commands()}[("project",)]
    for option in ("--topic", "--projection", "--schema"):
        (param,) = [param for param in project.params if option in param.opts]
        assert "env RUNEVENTS_" in param.help, option


def test_no_help_page_labels_a_flag_as_taking_a_value() -> None:
    pages = [invoke("--help")[1]] + [invoke(*path, "--help")[1] for path, _ in commands()]
    for page in pages:
        assert "Show this message and exit." in page, page
        assert "<bool>" not in page, page
    code, page = invoke("project", "--help")
    assert code == 0
    assert "--metrics-host" in page
    assert "env RUNEVENTS_METRICS_HOST; default 127.0.0.1" in page


def test_version_prints_the_version() -> None:
    code, output = invoke("--version")
    assert (code, output) == (0, f"runevents {version('runevents')}\n")
    done = subprocess.run(
        [sys.executable, "-m", "runevents.cli", "--version"], capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout) == (0, f"runevents {version('runevents')}\n")
