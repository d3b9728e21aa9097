"""The lifecycle tests' own S3-protocol server (moto, on a loopback port) and the credentials to reach it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runevents.devstack.s3 import LocalS3

# The variables of boto3's credential chain that LocalS3 hands out (the rest are Tansu's).
_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A moto S3 server of these tests' own (its own directory and port, one bucket), stopped at the end."""
    # Not found or not starting is a failure, never a skip: the S3 blob store would go untested.
    server = LocalS3(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_credentials(local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The server's keys in the environment, as boto3's default chain reads them; the secret key."""
    environment = local_s3.client_environment()
    for name in _CREDENTIALS:
        monkeypatch.setenv(name, environment[name])
    # No profile or shared file of the machine's user may stand in for them.
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return environment["AWS_SECRET_ACCESS_KEY"]
