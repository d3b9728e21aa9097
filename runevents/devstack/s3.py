"""A throwaway S3-protocol server on a loopback port (moto's, from PyPI): the durable broker's disk.

Tansu keeps a durable log only in S3 (its `s3://` storage engine); with this server on the machine, a
broker killed and started again finds every record it acknowledged. moto keeps the objects in its own
memory, so the log lives as long as this server does: stop the broker, not this, to test a crash.
"""

from __future__ import annotations

import atexit
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Final

from runevents.devstack.postgres import free_port
from runevents.errors import RunEventsError

HOST: Final = "127.0.0.1"
REGION: Final = "us-east-1"
# Any values: moto accepts every key; Tansu's S3 client insists on having some.
_ACCESS_KEY: Final = "runevents"
_SECRET_KEY: Final = "runevents-local"
_START_TIMEOUT_S: Final = 30.0
_STOP_TIMEOUT_S: Final = 10.0


class LocalS3Error(RunEventsError, RuntimeError):
    """The local S3 server could not be started or reached."""


class LocalS3:
    """One moto S3 server on 127.0.0.1 with one bucket, logging to `log_dir`, run by its owner."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir.resolve()
        self.log_file = self.log_dir / "s3.log"
        self.bucket = f"runevents-{uuid.uuid4().hex[:12]}"
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The server's URL (`http://127.0.0.1:PORT`); known once `start()` has run."""
        if self._port is None:
            raise LocalS3Error("the S3 server has not been started, so it has no port yet")
        return f"http://{HOST}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the server process was started here and has not exited."""
        return self._process is not None and self._process.poll() is None

    def client_environment(self) -> dict[str, str]:
        """The variables an S3 client (Tansu's) needs to reach this server over plain HTTP."""
        return {
            "AWS_ACCESS_KEY_ID": _ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": _SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self) -> None:
        """Start the server, wait until it answers and create the bucket; a no-op when it runs."""
        if self.running:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log_dir,
                start_new_session=True,  # a Ctrl-C meant for the owner must not take the log away first
            )
        self._port = port
        atexit.register(self.stop)
        try:
            self._wait_until_it_answers(port)
            self._create_bucket()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL): every object it held is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=_STOP_TIMEOUT_S)

    def _wait_until_it_answers(self, port: int) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise self._error(f"exited with code {self._process.returncode} while starting")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                if probe.connect_ex((HOST, port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise self._error(f"did not listen on {HOST}:{port} within {_START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)

    def _create_bucket(self) -> None:
        import boto3  # moto's own dependency; loaded only for a durable broker

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=_ACCESS_KEY,
            aws_secret_access_key=_SECRET_KEY,
        )
        client.create_bucket(Bucket=self.bucket)

    def _error(self, what: str) -> LocalS3Error:
        try:
            tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        except FileNotFoundError:
            tail = "(no log)"
        return LocalS3Error(f"the local S3 server (moto) {what}\n--- tail of {self.log_file} ---\n{tail}")
