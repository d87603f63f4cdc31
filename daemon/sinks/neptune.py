"""Neptune Database sink: `ExecuteOpenCypherQuery` through aiobotocore's `neptunedata` client.

Parameters travel as one JSON string (orjson); ids are Neptune's own `~id`.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import orjson

from daemon.aws import classify_aws_error, open_client
from daemon.cypher import neptune_dialect
from daemon.sinks.base import ErrorClass, GraphSink


class NeptuneSink(GraphSink):
    kind = "neptune"

    def __init__(
        self,
        name: str,
        *,
        endpoint: str,
        region: str,
        profile: str | None = None,
        timeout_seconds: float = 60.0,
        concurrency: int = 4,
    ) -> None:
        self.name = name
        self.dialect = neptune_dialect()
        self._endpoint, self._region, self._profile = endpoint, region, profile
        self._timeout, self._connections = timeout_seconds, concurrency * 2
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def start(self) -> None:
        if self._client is None:
            self._stack = AsyncExitStack()
            self._client = await open_client(
                self._stack,
                "neptunedata",
                endpoint=self._endpoint,
                region=self._region,
                profile=self._profile,
                timeout_seconds=self._timeout,
                max_connections=self._connections,
            )

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = None

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> None:
        await self._client.execute_open_cypher_query(
            openCypherQuery=statement, parameters=orjson.dumps({"rows": rows}).decode()
        )

    async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"openCypherQuery": statement}
        if params:
            kwargs["parameters"] = orjson.dumps(params).decode()
        response = await self._client.execute_open_cypher_query(**kwargs)
        return list(response.get("results", []))

    def classify(self, exc: BaseException) -> ErrorClass:
        return classify_aws_error(exc)
