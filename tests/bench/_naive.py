"""The naive consumer of issue 6, item 3: what most Lambda examples do with a Neptune stream.

Room in the design: the baseline contender of `tests/bench/end_to_end.py`, run as its own process
(`python -m tests.bench._naive URL`) so that it has a core of its own, as the daemon has. It reads the stream
page by page and applies **one parameterised openCypher statement per stream record, in order**, over HTTP to
the endpoint's openCypher API, waiting for each answer before the next. The statement for a record is the one
the daemon's planner makes for that record alone (so both contenders build the same final graph; a vertex
losing its last label takes two statements, delete-if-unlabelled and remove-label); the edge type of an
edge-property record comes from the `e` records seen earlier, which favours the naive consumer (a Lambda
that matched edges by id alone would scan every edge). The HTTP client is a plain keep-alive aiohttp session
(lighter than botocore), again in the naive consumer's favour. Prints `{"seconds", "records", "requests"}`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import aiohttp
import orjson

from daemon.cypher import neptune_dialect
from daemon.scheduler import Planner
from daemon.sources.pgjson import translate_record

AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=bench/20240101/us-east-1/neptune-db/aws4_request"}


async def consume(url: str, page_limit: int = 1000) -> dict[str, Any]:
    async def no_lookup(ids: list[str]) -> dict[str, str]:
        return {}

    planner = Planner(neptune_dialect(), no_lookup, 10**9)
    params: dict[str, Any] = {"iteratorType": "TRIM_HORIZON", "limit": page_limit}
    records = requests = 0
    started = time.perf_counter()
    async with aiohttp.ClientSession(headers=AUTH) as http:
        while True:
            async with http.get(f"{url}/propertygraph/stream", params=params) as response:
                if response.status == 404:  # StreamRecordsNotFoundException: caught up
                    break
                response.raise_for_status()
                page = orjson.loads(await response.read())
            for record in page["records"]:
                records += 1
                plan = await planner.plan([translate_record(record)])
                for batch in plan.batches():
                    for row in batch.rows:
                        body = orjson.dumps(
                            {"query": batch.statement, "parameters": orjson.dumps({"rows": [row]}).decode()}
                        )
                        async with http.post(
                            f"{url}/opencypher", data=body, headers={"Content-Type": "application/json"}
                        ) as answer:
                            if answer.status != 200:
                                raise RuntimeError(f"HTTP {answer.status}: {(await answer.text())[:300]}")
                            await answer.read()
                        requests += 1
            last = page["lastEventId"]
            params = {
                "iteratorType": "AFTER_SEQUENCE_NUMBER",
                "commitNum": last["commitNum"],
                "opNum": last["opNum"],
                "limit": page_limit,
            }
    return {"seconds": time.perf_counter() - started, "records": records, "requests": requests}


def main(argv: list[str]) -> int:
    print(orjson.dumps(asyncio.run(consume(argv[0]))).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
