"""Shared fixtures: one Neptune-compatible stand per session, reset for each test that uses it; one moto server
process (S3, DynamoDB, DynamoDB Streams) per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stand.moto_process import MotoProcess, aws_test_environment
from tests.stand.neptune_endpoint import NeptuneStand


@pytest.fixture(scope="session")
def stand_session() -> Iterator[NeptuneStand]:
    with NeptuneStand() as stand:
        yield stand


@pytest.fixture
def stand(stand_session: NeptuneStand) -> NeptuneStand:
    stand_session.reset()
    return stand_session


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoProcess]:
    """moto in server mode as a child process for the session; dummy AWS credentials are in os.environ."""
    server = MotoProcess(tmp_path_factory.mktemp("moto"))
    try:
        with aws_test_environment():
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server(moto: MotoProcess) -> str:
    """The endpoint URL of the session's moto server."""
    return moto.url
