"""moto in server mode for tests: every AWS service moto fakes (S3, DynamoDB, DynamoDB Streams, ...) on one
local HTTP endpoint that real aiobotocore clients, the test stand and daemon subprocesses can all reach.

`MotoServer` wraps `moto.server.ThreadedMotoServer` on 127.0.0.1 and a free port. The conftest fixture
`moto_server` (session scoped) starts one, sets dummy credentials in the environment (`TEST_AWS_ENV`) for the
session, and yields the endpoint URL; `MotoServer.reset()` (POST /moto-api/reset) forgets every resource.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

TEST_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class MotoServer:
    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> MotoServer:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        """Forget every bucket, table and stream."""
        request = urllib.request.Request(self.url + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass


@contextmanager
def aws_test_environment() -> Iterator[None]:
    """Dummy credentials and region in os.environ for the duration (restored afterwards)."""
    saved = {key: os.environ.get(key) for key in TEST_AWS_ENV}
    os.environ.update(TEST_AWS_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def running_moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        with aws_test_environment():
            yield server
    finally:
        server.stop()
