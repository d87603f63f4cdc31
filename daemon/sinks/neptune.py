"""Neptune Database sink: `ExecuteOpenCypherQuery` through aiobotocore's `neptunedata` client.

Parameters travel as one JSON string (orjson); ids are Neptune's own `~id`. Batch statements take the lean
path (`daemon.aws.SignedCall`): the body is the one botocore's serialiser makes, `{"query", "parameters"}`.
"""

from __future__ import annotations

from typing import Any

import orjson

from daemon.aws import SignedCall
from daemon.sinks.aws_base import AwsClientSink
from daemon.sinks.base import check_request_size


class NeptuneSink(AwsClientSink):
    kind = "neptune"
    service = "neptunedata"

    async def _capture(self, session: Any) -> SignedCall:
        return await SignedCall.capture(
            self._client, session, "ExecuteOpenCypherQuery", openCypherQuery="RETURN 1", parameters="{}"
        )

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parameters = orjson.dumps({"rows": rows}).decode()
        if self._call is not None:
            body = orjson.dumps({"query": statement, "parameters": parameters})
            check_request_size(len(body), self.max_request_bytes, rows)
            answer = await self._call.send(body)
            return list((orjson.loads(answer) if answer else {}).get("results") or [])
        check_request_size(len(parameters) + len(statement), self.max_request_bytes, rows)
        response = await self._client.execute_open_cypher_query(openCypherQuery=statement, parameters=parameters)
        return list(response.get("results") or [])

    async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"openCypherQuery": statement}
        if params:
            kwargs["parameters"] = orjson.dumps(params).decode()
        response = await self._client.execute_open_cypher_query(**kwargs)
        return list(response.get("results", []))
