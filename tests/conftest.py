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


@pytest.fixture
def uncached_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For tests that run a command in-process: its `configure_logging` keeps structlog from caching loggers, and
    the defaults come back afterwards. A logger cached while logging went to a test's captured stderr would go
    on writing there, closed, in every later test of the session."""
    import structlog

    import daemon.observability

    configure = daemon.observability.configure_logging

    def uncached(*args: object, **kwargs: object) -> None:
        configure(*args, **kwargs)  # type: ignore[arg-type]
        structlog.configure(cache_logger_on_first_use=False)

    monkeypatch.setattr(daemon.observability, "configure_logging", uncached)
    yield
    structlog.reset_defaults()
