"""Shared fixtures: one Neptune-compatible stand per session, reset for each test that uses it; one moto server
(S3, DynamoDB, ...) per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stand.moto_server import MotoServer, running_moto_server
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
def moto_server_instance() -> Iterator[MotoServer]:
    with running_moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def moto_server(moto_server_instance: MotoServer) -> str:
    """The endpoint URL of a session-wide moto server; dummy AWS credentials and region are in os.environ."""
    return moto_server_instance.url
