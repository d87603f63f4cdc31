"""moto in server mode as a child process: DynamoDB, DynamoDB Streams and S3 over HTTP for the daemon's own
aiobotocore clients, the test stand's loader and daemon subprocesses, with DynamoDB's conditional writes atomic
(`tests.stand.moto_server`). A process of its own keeps moto's request handling off the test process's GIL.
`MotoProcess.reset()` (POST /moto-api/reset) forgets every resource."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.stand.daemon_process import AWS_ENV


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoProcess:
    def __init__(self, log_dir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_dir / "moto.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.stand.moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_ENV},
            cwd=Path(__file__).resolve().parents[2],  # (the launcher is `tests.stand.moto_server`)
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start (see {log_dir / 'moto.log'})") from None
                time.sleep(0.1)

    def reset(self) -> None:
        """Forget every table, stream and bucket."""
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10)

    def client(self, service: str):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@contextmanager
def aws_test_environment() -> Iterator[None]:
    """Dummy credentials and region in os.environ for the duration (restored afterwards)."""
    saved = {key: os.environ.get(key) for key in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
