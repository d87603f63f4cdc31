"""What the Neptune Database and Neptune Analytics sinks share: one aiobotocore client per sink, opened on
start and closed on close, and the AWS error classification."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from daemon.aws import classify_aws_error, open_client
from daemon.cypher import neptune_dialect
from daemon.sinks.base import ErrorClass, GraphSink


class AwsClientSink(GraphSink):
    service: str  # the botocore service name

    def __init__(
        self,
        name: str,
        *,
        endpoint: str | None,
        region: str,
        profile: str | None = None,
        timeout_seconds: float = 60.0,
        concurrency: int = 4,
        inject_host_prefix: bool = True,
    ) -> None:
        self.name = name
        self.dialect = neptune_dialect()
        self._client_options = {
            "endpoint": endpoint,
            "region": region,
            "profile": profile,
            "timeout_seconds": timeout_seconds,
            "max_connections": concurrency * 2,
            "inject_host_prefix": inject_host_prefix,
        }
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def start(self) -> None:
        if self._client is None:
            self._stack = AsyncExitStack()
            self._client = await open_client(self._stack, self.service, **self._client_options)

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = None

    async def read(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        # openCypher on Neptune has no read-only switch: the graph view's statements are fixed MATCH ... RETURN.
        if self._client is None:
            raise ConnectionError(f"sink {self.name!r} is not connected yet")
        return await self.query(statement, params)

    def classify(self, exc: BaseException) -> ErrorClass:
        return classify_aws_error(exc)
