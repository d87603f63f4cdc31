"""Neptune Analytics sink: `ExecuteQuery` (language OPEN_CYPHER) through aiobotocore's `neptune-graph` client.

The data-plane host carries the graph id as a prefix (`{graphIdentifier}.`); with an explicit `endpoint`
(a VPC endpoint or the test stand) the prefix is not injected. Batch statements take the lean path
(`daemon.aws.SignedCall`, the host prefix and `graphIdentifier` header in its template): the body is the one
botocore's serialiser makes, `{"query", "language", "parameters"}`.
"""

from __future__ import annotations

from typing import Any

import orjson

from daemon.aws import SignedCall
from daemon.sinks.aws_base import AwsClientSink
from daemon.sinks.base import check_request_size


class NeptuneAnalyticsSink(AwsClientSink):
    kind = "neptune-analytics"
    service = "neptune-graph"

    def __init__(self, name: str, *, graph_id: str, endpoint: str | None = None, **options: Any) -> None:
        super().__init__(name, endpoint=endpoint, inject_host_prefix=endpoint is None, **options)
        self._graph_id = graph_id

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

    async def _capture(self, session: Any) -> SignedCall:
        return await SignedCall.capture(
            self._client,
            session,
            "ExecuteQuery",
            graphIdentifier=self._graph_id,
            queryString="RETURN 1",
            language="OPEN_CYPHER",
            parameters={},
        )

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._call is not None:
            body = orjson.dumps({"query": statement, "language": "OPEN_CYPHER", "parameters": {"rows": rows}})
            check_request_size(len(body), self.max_request_bytes, rows)
            answer = await self._call.send(body)
            return list((orjson.loads(answer) if answer else {}).get("results") or [])
        check_request_size(len(orjson.dumps(rows)) + len(statement), self.max_request_bytes, rows)
        return list((await self._run(statement, {"rows": rows})).get("results") or [])

    async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list((await self._run(statement, params)).get("results", []))
