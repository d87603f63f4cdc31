"""Neptune Analytics sink: `ExecuteQuery` (language OPEN_CYPHER) through aiobotocore's `neptune-graph` client.

The data-plane host carries the graph id as a prefix (`{graphIdentifier}.`); with an explicit `endpoint`
(a VPC endpoint or the test stand) the prefix is not injected.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import orjson

from daemon.aws import classify_aws_error, open_client
from daemon.cypher import neptune_dialect
from daemon.sinks.base import ErrorClass, GraphSink


class NeptuneAnalyticsSink(GraphSink):
    kind = "neptune-analytics"

    def __init__(
        self,
        name: str,
        *,
        graph_id: str,
        region: str,
        endpoint: str | None = None,
        profile: str | None = None,
        timeout_seconds: float = 60.0,
        concurrency: int = 4,
    ) -> None:
        self.name = name
        self.dialect = neptune_dialect()
        self._graph_id, self._endpoint, self._region, self._profile = graph_id, endpoint, region, profile
        self._timeout, self._connections = timeout_seconds, concurrency * 2
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def start(self) -> None:
        if self._client is None:
            self._stack = AsyncExitStack()
            self._client = await open_client(
                self._stack,
                "neptune-graph",
                endpoint=self._endpoint,
                region=self._region,
                profile=self._profile,
                timeout_seconds=self._timeout,
                max_connections=self._connections,
                inject_host_prefix=self._endpoint is None,
            )

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = None

    async def _run(self, statement: str, params: dict[str, Any] | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "graphIdentifier": self._graph_id,
            "queryString": statement,
            "language": "OPEN_CYPHER",
        }
        if params:
            kwargs["parameters"] = params
        response = await self._client.execute_query(**kwargs)
        async with response["payload"] as stream:
            body = await stream.read()
        return orjson.loads(body) if body else {}

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> None:
        await self._run(statement, {"rows": rows})

    async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list((await self._run(statement, params)).get("results", []))

    def classify(self, exc: BaseException) -> ErrorClass:
        return classify_aws_error(exc)
