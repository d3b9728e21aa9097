"""Every command's failure paths, as an operator meets them: real `runevents` processes against
ports nothing listens on, a real PostgreSQL that refuses the role, and URLs runevents cannot use.

Each run plants a password in one place a URL (or the environment) can carry one: the userinfo,
`?password=`, `?sslpassword=`, percent-encoded inside a kafka URL's `database=`, or a
RUNEVENTS_* variable. Whatever fails, the output must be short (one `error:` line, no traceback, no
Python reprs, no "Unclosed" client), name the problem, and never show the password.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final
from urllib.parse import quote

import pytest
from sqlalchemy.engine import make_url

from runevents.devstack.postgres import free_port

PLANTED: Final = "Pl4ntedS3cretXyz"
TIMEOUT_S: Final = 30
# What must never appear in a failure's output.
TRACEBACK: Final = "Traceback"
ADDRESS_REPR: Final = re.compile(r"\('[^'\s]+', \d+|<AddressFamily")
SUPPORTED: Final = ("postgresql://", "sqlite://")


def runevents(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `runevents ARGS` in a process of its own: its exit status and stdout+stderr."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("RUNEVENTS_")}
    environment.update(env or {}, COLUMNS="200", PYTHONWARNINGS="default")
    done = subprocess.run(
        [sys.executable, "-m", "runevents.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=environment,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout + done.stderr


def failed_cleanly(code: int, output: str, *problems: str, secret: str = PLANTED) -> str:
    """The error line of a failure that is short, names one of `problems` and shows no secret."""
    assert secret not in output, output
    assert code == 1, output
    assert TRACEBACK not in output, output
    assert "Unclosed" not in output, output
    assert not ADDRESS_REPR.search(output), output
    lines = output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, output
    # At most a banner (demo) or the Kafka client's own log line (project) besides the error.
    assert len(lines) <= 3, output
    assert any(problem in errors[0] for problem in problems), output
    return errors[0]


def closed_db(position: str) -> tuple[str, dict[str, str]]:
    """A PostgreSQL URL to a port nothing listens on, with the planted password at `position`."""
    return planted_url(f"127.0.0.1:{free_port()}", "runs", position)


def planted_url(
    hostport: str, database: str, position: str, user: str = "carol"
) -> tuple[str, dict[str, str]]:
    """A PostgreSQL URL and the environment a command gets, the password planted at `position`."""
    base = f"postgresql://{user}@{hostport}/{database}"
    if position == "userinfo":
        return f"postgresql://{user}:{PLANTED}@{hostport}/{database}", {}
    if position == "password=":
        return f"{base}?password={PLANTED}", {}
    if position == "sslpassword=":
        return f"{base}?sslmode=disable&sslpassword={PLANTED}", {}
    assert position == "env"
    return base, {"RUNEVENTS_DATABASE_PASSWORD": PLANTED}


def kafka_url(database: str) -> str:
    """A kafka URL whose `database=` is `database`, percent-encoded (the password inside it too)."""
    return f"kafka://127.0.0.1:{free_port()}/run-events?database={quote(database, safe='')}"


POSITIONS: Final = ("userinfo", "password=", "sslpassword=", "env")
REFUSED: Final = "refused or did not answer"
NO_BROKER: Final = "did not answer"


def database_commands(db: str, kafka: str, tmp: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """Each command that reaches the database `db`, and what its error must say."""
    jsonl = tmp / "history"
    (jsonl / "threads").mkdir(parents=True, exist_ok=True)
    other = f"postgresql://dave@127.0.0.1:{free_port()}/other"
    return {
        "db upgrade": (["db", "upgrade", db], ("cannot upgrade",)),
        "project": (["project", "--database", db, "--kafka", kafka, "--metrics-port", "0"], (REFUSED,)),
        "replay": (["replay", "--projection", "v2", "--database", db, "--kafka", kafka], (NO_BROKER,)),
        "promote": (["promote", "v2", "--database", db, "--kafka", kafka], (REFUSED,)),
        "projection history": (["projection", "history", "--database", db], (REFUSED,)),
        "projection drop": (["projection", "drop", "v2", "--yes", "--database", db], (REFUSED,)),
        "dead-letters list": (["dead-letters", "list", "--database", db], (REFUSED,)),
        "dead-letters drop": (["dead-letters", "drop", "1", "--note", "x", "--database", db], (REFUSED,)),
        "usage run": (["usage", "run", "--database", db, "--kafka", kafka], (REFUSED,)),
        "usage show": (["usage", "show", "t1", "--database", db], (REFUSED,)),
        "backfill (source)": (["backfill", db, "--database", other, "--kafka", kafka], ("the source",)),
        "backfill (target)": (["backfill", str(jsonl), "--database", db, "--kafka", kafka], (NO_BROKER,)),
    }


@pytest.mark.parametrize("position", POSITIONS)
def test_every_command_on_a_database_that_does_not_answer_says_so_without_the_password(
    position: str, tmp_path: Path
) -> None:
    db, env = closed_db(position)
    kafka = f"127.0.0.1:{free_port()}"
    commands = database_commands(db, kafka, tmp_path)
    if position == "env":
        del commands["backfill (source)"]  # a source's password is in its URL only
    # Each command is a process of its own that mostly waits on a refused connection: run them together.
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = {name: pool.submit(runevents, *args, env=env) for name, (args, _) in commands.items()}
    for name, (_, problems) in commands.items():
        code, output = runs[name].result()
        line = failed_cleanly(code, output, *problems)
        assert "127.0.0.1:" in line, (name, line)  # names the server (or the source) it could not reach


@pytest.mark.parametrize("position", ["password=", "sslpassword="])
def test_the_demo_on_a_database_that_does_not_answer_says_so_without_the_password(
    position: str, tmp_path: Path
) -> None:
    db, _ = closed_db(position)
    env = {"RUNEVENTS_DATABASE_URL": db, "RUNEVENTS_KAFKA": f"127.0.0.1:{free_port()}"}
    code, output = runevents(
        "demo", "--agents", "1", "--runs-per-agent", "1", "--dir", str(tmp_path / "demo"), env=env
    )
    failed_cleanly(code, output, "ConnectionRefusedError")


@pytest.mark.parametrize(
    ("position", "command"),
    [
        ("userinfo", "db upgrade"),
        ("password=", "project"),
        ("sslpassword=", "dead-letters list"),
        ("password=", "backfill (source)"),
        ("userinfo", "promote"),
        ("env", "projection history"),
    ],
)
def test_a_real_postgresql_refusing_the_role_is_one_line_without_the_password(
    postgres_url: str, tmp_path: Path, position: str, command: str
) -> None:
    server = make_url(postgres_url)
    hostport = f"{server.host}:{server.port}"
    # A role that does not exist: refused whether the server checks passwords or trusts the host.
    db, env = planted_url(hostport, server.database or "postgres", position, user="no_such_role")
    args, _ = database_commands(db, f"127.0.0.1:{free_port()}", tmp_path)[command]
    code, output = runevents(*args, env=env)
    line = failed_cleanly(code, output, REFUSED, "cannot be read", "cannot upgrade")
    assert "no_such_role" in line, line  # the server's own reason


def test_the_broker_commands_on_brokers_that_do_not_answer_say_so_without_the_sasl_password(
    tmp_path: Path,
) -> None:
    kafka = f"127.0.0.1:{free_port()}"
    sasl = {
        "RUNEVENTS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RUNEVENTS_KAFKA_SASL_MECHANISM": "PLAIN",
        "RUNEVENTS_KAFKA_SASL_USERNAME": "carol",
        "RUNEVENTS_KAFKA_SASL_PASSWORD": PLANTED,
    }
    code, output = runevents("topic", "create", "--kafka", kafka, env=sasl)
    line = failed_cleanly(code, output, f"the brokers at {kafka} did not answer")
    assert "KafkaConnectionError" in line
    for env in ({}, sasl):
        code, output = runevents("topic", "create", "--kafka", kafka, env=env)
        failed_cleanly(code, output, f"the brokers at {kafka} did not answer")


async def test_a_projector_on_tables_never_migrated_names_a_db_upgrade_that_works(pg_database: str) -> None:
    kafka = f"127.0.0.1:{free_port()}"
    project = ("project", "--database", pg_database, "--kafka", kafka, "--metrics-port", "0")
    code, output = runevents(*project, "--schema", "tenant_h")
    line = failed_cleanly(code, output, "runevents db upgrade")
    hint = shlex.split(line.split("run: ", 1)[1])
    assert hint[:3] == ["runevents", "db", "upgrade"], line
    # The command it names runs as it is (its options exist), and then the projector gets further.
    code, output = runevents(*hint[1:])
    assert code == 0, output
    assert "-> " in output
    code, output = runevents(*project, "--schema", "tenant_h")
    failed_cleanly(code, output, f"the brokers at {kafka} did not answer")


def unsupported_urls() -> dict[str, str]:
    """Database URLs runevents cannot use, each with the password planted where it can be."""
    mysql = f"mysql://carol:{PLANTED}@127.0.0.1:3306/runs"
    return {
        "mysql": mysql,
        "mysql, password=": f"mysql://carol@127.0.0.1:3306/runs?password={PLANTED}",
        "kafka URL": kafka_url(f"postgresql://carol:{PLANTED}@127.0.0.1:5432/runs"),
        "kafka URL of mysql": kafka_url(mysql),
        "postgresql, unknown driver": f"postgresql+psycopg://carol:{PLANTED}@127.0.0.1/runs",
    }


@pytest.mark.parametrize("kind", list(unsupported_urls()))
def test_an_unsupported_database_url_is_one_line_naming_the_supported_schemes(
    kind: str, tmp_path: Path
) -> None:
    url = unsupported_urls()[kind]
    kafka = f"127.0.0.1:{free_port()}"
    target = f"postgresql://carol@127.0.0.1:{free_port()}/runs"
    runs = {
        "db upgrade": (["db", "upgrade", url], {}),
        "project": (["project", "--database", url, "--kafka", kafka, "--metrics-port", "0"], {}),
        "backfill (source)": (["backfill", url, "--database", target, "--kafka", kafka], {}),
        "backfill (target)": (["backfill", str(tmp_path), "--database", url, "--kafka", kafka], {}),
        "demo": (
            ["demo", "--agents", "1", "--dir", str(tmp_path / "demo")],
            {"RUNEVENTS_DATABASE_URL": url, "RUNEVENTS_KAFKA": kafka},
        ),
    }
    for args, env in runs.values():
        code, output = runevents(*args, env=env)
        line = failed_cleanly(code, output, *SUPPORTED)
        assert all(scheme in line for scheme in SUPPORTED), line


@pytest.mark.parametrize("url", ["not a url at all", "postgres//carol@host/runs", "://"])
def test_a_database_url_that_is_no_url_is_one_line_naming_the_supported_schemes(url: str) -> None:
    code, output = runevents("db", "upgrade", url)
    line = failed_cleanly(code, output, *SUPPORTED)
    assert all(scheme in line for scheme in SUPPORTED), line
    code, output = runevents("demo", "--agents", "1", env={"RUNEVENTS_DATABASE_URL": url})
    failed_cleanly(code, output, *SUPPORTED)


def test_config_shows_no_planted_password_in_any_position() -> None:
    for position in POSITIONS:
        db, env = closed_db(position)
        code, output = runevents(
            "config",
            env={**env, "RUNEVENTS_DATABASE_URL": db, "RUNEVENTS_KAFKA_SASL_PASSWORD": PLANTED + "k"},
        )
        assert code == 0, output
        assert PLANTED not in output, output
        assert "127.0.0.1:" in output  # the URL itself is shown
    # A kafka URL is no database URL: refused, in one line naming the setting, without the password.
    code, output = runevents(
        "config", env={"RUNEVENTS_DATABASE_URL": kafka_url(f"postgresql://c:{PLANTED}@h/db")}
    )
    failed_cleanly(code, output, "setting database_url (env RUNEVENTS_DATABASE_URL)")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["db", "upgrade", "{db}", "--schema", "Tenant"], "schema name 'Tenant'"),
        (["db", "upgrade", "{db}", "--schema", "pg_tenant"], "reserved by PostgreSQL"),
        (["db", "upgrade", "{db}", "--schema", "t" * 64], "PostgreSQL's limit is 63"),
        (["topic", "create", "--kafka", "{kafka}", "--topic", ".."], "topic name '..'"),
        (["topic", "create", "--kafka", "{kafka}", "--topic", "runs/x"], "topic name 'runs/x'"),
        (["topic", "create", "--kafka", "{kafka}", "--topic", "t" * 240], "leave room for '.dead-letters'"),
        (["project", "--database", "{db}", "--kafka", "{kafka}", "--schema", "a-b"], "schema name 'a-b'"),
        (["project", "--database", "{db}", "--kafka", "{kafka}", "--topic", "a b"], "topic name 'a b'"),
        (["project", "--database", "{db}", "--kafka", "{kafka}", "--projection", "V2"], "projection name"),
        (["replay", "--projection", "v-2", "--database", "{db}", "--kafka", "{kafka}"], "--projection"),
        (
            ["replay", "--projection", "v2", "--schema", "pg_x", "--database", "{db}", "--kafka", "{kafka}"],
            "--schema",
        ),
        (
            ["replay", "--projection", "v2", "--topic", ".", "--database", "{db}", "--kafka", "{kafka}"],
            "topic",
        ),
        (["promote", "V2", "--database", "{db}", "--kafka", "{kafka}"], "PROJECTION: projection name 'V2'"),
        (
            ["promote", "v2", "--serving", "information_schema", "--database", "{db}", "--kafka", "{kafka}"],
            "--serving",
        ),
        (["projection", "drop", "v2", "--schema", "x;drop", "--yes", "--database", "{db}"], "--schema"),
    ],
)
def test_a_name_that_breaks_the_rule_is_refused_before_anything_connects(
    args: list[str], problem: str
) -> None:
    # Servers that do not answer: a command that tried to reach one (to create or change something
    # under the bad name) would fail on that instead, so the refusal came first.
    db, _ = closed_db("password=")
    kafka = f"127.0.0.1:{free_port()}"
    code, output = runevents(*(arg.format(db=db, kafka=kafka) for arg in args))
    line = failed_cleanly(code, output, problem)
    assert "did not answer" not in line, line


def test_a_projector_whose_metrics_port_is_taken_says_so_in_one_line(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path}/read.db"
    code, output = runevents("db", "upgrade", database)
    assert code == 0, output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        kafka = f"127.0.0.1:{free_port()}"
        code, output = runevents(
            "project", "--database", database, "--kafka", kafka, "--metrics-port", str(port)
        )
    line = failed_cleanly(code, output, f"cannot serve metrics on 127.0.0.1:{port}")
    assert "address already in use" in line


def test_an_unexpected_error_is_masked_and_ends_in_one_error_line() -> None:
    # A bug (an exception no command turned into a line) still prints no password, in a process of its own.
    code = (
        "import sys\n"
        "from runevents.cli.app import RunEventsApp\n"
        "app = RunEventsApp()\n"
        "@app.command()\n"
        "def boom() -> None:\n"
        f"    raise RuntimeError('lost postgresql://carol:{PLANTED}@db/runs?sslpassword={PLANTED}2')\n"
        "@app.command()\n"
        "def other() -> None: ...\n"
        "sys.argv = ['runevents', 'boom']\n"
        "app()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 1, done.stderr
    assert PLANTED not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "error: unexpected RuntimeError: lost postgresql://carol:***@db/runs?sslpassword=*** "
        "(a bug in runevents)"
    )
