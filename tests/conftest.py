"""Shared fixtures: one Neptune-compatible stand per session, reset for each test that uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stand.neptune_endpoint import NeptuneStand


@pytest.fixture(scope="session")
def stand_session() -> Iterator[NeptuneStand]:
    with NeptuneStand() as stand:
        yield stand


@pytest.fixture
def stand(stand_session: NeptuneStand) -> NeptuneStand:
    stand_session.reset()
    return stand_session
