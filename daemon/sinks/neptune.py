"""Neptune Database sink: `ExecuteOpenCypherQuery` through aiobotocore's `neptunedata` client.

Parameters travel as one JSON string (orjson); ids are Neptune's own `~id`.
"""

from __future__ import annotations

from typing import Any

import orjson

from daemon.sinks.aws_base import AwsClientSink


class NeptuneSink(AwsClientSink):
    kind = "neptune"
    service = "neptunedata"

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        response = await self._client.execute_open_cypher_query(
            openCypherQuery=statement, parameters=orjson.dumps({"rows": rows}).decode()
        )
        return list(response.get("results") or [])

    async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"openCypherQuery": statement}
        if params:
            kwargs["parameters"] = orjson.dumps(params).decode()
        response = await self._client.execute_open_cypher_query(**kwargs)
        return list(response.get("results", []))
