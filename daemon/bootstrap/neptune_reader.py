"""Snapshot of a Neptune Database source: the stream position first, then every vertex and edge by openCypher.

Room in the design: bootstrap steps 1 and 2 for `kind = "neptune"` sources (a `SnapshotReader`).

* **Position first.** `GetPropertygraphStream` with `iteratorType=LATEST` returns the newest change's event id;
  `run` continues after it. An empty stream answers 404 `StreamRecordsNotFoundException` whose message names
  the last valid event id (`[commitNum = 0, opNum = 0]` for a stream that never had a change).
* **Keyset pagination** over the ids, each page one `ExecuteOpenCypherQuery`:
  `MATCH (n) WHERE id(n) > $after RETURN n ORDER BY id(n) LIMIT <page>` (the first page without the WHERE),
  then `MATCH (a)-[r]->(b) WHERE id(r) > $after RETURN id(r), type(r), id(a), id(b), properties(r) ORDER BY
  id(r) LIMIT <page>` (scalars: no relationship objects to render). Unlike `SKIP`, a page starts where the
  last one ended, so concurrent inserts and deletes cannot shift elements between pages: an element that exists
  for the whole pass is read exactly once. A page that does not move past the previous one stops the bootstrap
  (it would loop).
* Values pass the value rule (`daemon.values`): a non-finite double becomes "NaN" / "Infinity" / "-Infinity"
  as it does when streamed; a value the rule cannot hold is dead-lettered (stage `snapshot`) and left out.
* An edge whose endpoint was not seen in the vertex pass was created after the recorded position; the stream
  replay creates it, so it is dropped here (`dangling`). The reader keeps the vertex ids of the pass in memory
  for that check (about 100 bytes a vertex).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import orjson
import structlog

from daemon.aws import error_code
from daemon.bootstrap.records import BootstrapError, SnapshotEdge, SnapshotVertex
from daemon.bootstrap.retry import with_retries
from daemon.config import NeptuneSourceConfig
from daemon.deadletter import DeadLetterFile
from daemon.model import Position
from daemon.sources.stream_reader import open_neptune_client
from daemon.values import INT64_MAX, INT64_MIN, UnsupportedValue, encode_float

log = structlog.get_logger("daemon.bootstrap.neptune")

PARTITION = ""  # a Neptune stream is one partition (as in daemon.sources.neptune)
_LAST_VALID = re.compile(r"commitNum\s*=\s*(\d+)\s*,\s*opNum\s*=\s*(\d+)")


def _value(raw: Any) -> Any:
    """A property value from an openCypher JSON result, by the value rule."""
    if isinstance(raw, bool) or isinstance(raw, str):
        return raw
    if isinstance(raw, int):
        if not INT64_MIN <= raw <= INT64_MAX:
            raise UnsupportedValue(f"integer {raw} does not fit in 64 bits")
        return raw
    if isinstance(raw, float):
        return encode_float(raw)
    if isinstance(raw, list):
        return [_value(item) for item in raw]
    raise UnsupportedValue(f"a {type(raw).__name__} property value")


class NeptuneSnapshotReader:
    def __init__(
        self,
        client: Any,
        *,
        source: str,
        page_size: int = 5000,
        dead_letters: DeadLetterFile | None = None,
    ) -> None:
        self.client = client
        self.source = source
        self.page_size = page_size
        self.dead_letters = dead_letters
        self.dangling = 0
        self.dead_lettered = 0
        self.read_seconds = 0.0  # time spent waiting for pages
        self.position: Position | None = None
        self._vertex_ids: set[str] = set()

    async def position_before(self) -> dict[str, Position]:
        self.position = await stream_position(self.client, "get_propertygraph_stream", self.source)
        return {PARTITION: self.position}

    async def _page(self, template: str, variable: str, after: str | None) -> list[dict[str, Any]]:
        where = "" if after is None else f"WHERE id({variable}) > $after "
        query = template.format(where=where, limit=int(self.page_size))
        params = orjson.dumps({"after": after}).decode() if after is not None else None
        kwargs: dict[str, Any] = {"openCypherQuery": query}
        if params is not None:
            kwargs["parameters"] = params
        started = time.perf_counter()
        response = await with_retries(lambda: self.client.execute_open_cypher_query(**kwargs), what="snapshot page")
        self.read_seconds += time.perf_counter() - started
        return list(response.get("results") or [])

    async def vertices(self) -> AsyncIterator[list[SnapshotVertex]]:
        after: str | None = None
        while True:
            rows = await self._page("MATCH (n) {where}RETURN n ORDER BY id(n) LIMIT {limit}", "n", after)
            page = [self._vertex(row["n"]) for row in rows]
            if not page:
                return
            after = _check_progress(after, [v.id for v in page], "vertex")
            self._vertex_ids.update(v.id for v in page)
            yield page
            if len(rows) < self.page_size:
                return

    async def edges(self) -> AsyncIterator[list[SnapshotEdge]]:
        after: str | None = None
        while True:
            rows = await self._page(
                "MATCH (a)-[r]->(b) {where}RETURN id(r) AS id, type(r) AS type, id(a) AS start, id(b) AS end, "
                "properties(r) AS props ORDER BY id(r) LIMIT {limit}",
                "r",
                after,
            )
            edges = [self._edge(row) for row in rows]
            if not edges:
                return
            after = _check_progress(after, [e.id for e in edges], "edge")
            known = self._vertex_ids
            page = [e for e in edges if e.from_id in known and e.to_id in known]
            self.dangling += len(edges) - len(page)
            if page:
                yield page
            if len(rows) < self.page_size:
                return

    def _vertex(self, node: dict[str, Any]) -> SnapshotVertex:
        vertex_id = str(node["~id"])
        return SnapshotVertex(vertex_id, tuple(node.get("~labels") or ()), self._props(vertex_id, node))

    def _edge(self, row: dict[str, Any]) -> SnapshotEdge:
        edge_id = str(row["id"])
        props = self._props(edge_id, {"~properties": row.get("props")})
        return SnapshotEdge(edge_id, str(row["type"]), str(row["start"]), str(row["end"]), props)

    def _props(self, element_id: str, element: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, raw in (element.get("~properties") or {}).items():
            if raw is None or key == "~id":  # `~id` is the element id, never a property (some engines list it)
                continue
            try:
                out[key] = _value(raw)
            except UnsupportedValue as exc:
                self._dead_letter(element_id, key, raw, str(exc))
        return out

    def _dead_letter(self, element_id: str, key: str, raw: Any, reason: str) -> None:
        self.dead_lettered += 1
        log.error("snapshot value cannot be replicated", source=self.source, element=element_id, key=key, error=reason)
        if self.dead_letters is not None:
            self.dead_letters.write(
                stage="snapshot",
                source=self.source,
                reason=f"unsupported value: {reason}",
                entries=[
                    {"position": list(self.position or ()), "element": element_id, "key": key, "value": repr(raw)}
                ],
            )


async def stream_position(client: Any, operation: str, source: str) -> Position:
    """The newest change's event id of a Neptune stream (`operation`: `get_propertygraph_stream` or
    `get_sparql_stream`, `iteratorType=LATEST`); an empty stream's 404 names the last valid event id."""
    try:
        response = await with_retries(
            lambda: getattr(client, operation)(iteratorType="LATEST", limit=1), what=f"{operation} LATEST"
        )
        event = response["lastEventId"]
        position: Position = (int(event["commitNum"]), int(event["opNum"]))
    except Exception as exc:
        code = error_code(exc)
        if code == "StreamRecordsNotFoundException":
            found = _LAST_VALID.search(str(exc))
            position = (int(found[1]), int(found[2])) if found else (0, 0)
        elif code in ("UnsupportedOperationException", "StreamsNotEnabledException", "BadRequestException"):
            raise BootstrapError(
                f"source {source!r}: cannot read the stream position ({exc}); enable Neptune Streams "
                "(neptune_streams = 1 in the cluster parameter group) before bootstrapping"
            ) from exc
        else:
            raise
    log.info("stream position recorded", source=source, commit_num=position[0], op_num=position[1])
    return position


def _check_progress(after: str | None, ids: list[str], what: str) -> str:
    """The page's last id, after checking that the page moved on from `after` (no id twice, `after` not again).

    The order itself is the server's (Neptune compares strings as Java does, by UTF-16 code units), so it is not
    re-checked here; a page that does not move on would loop forever."""
    if len(set(ids)) != len(ids) or (after is not None and after in ids):
        raise BootstrapError(
            f"the source returned a {what} page that does not move past id {after!r}; keyset pagination needs "
            "ORDER BY id() and id() > $after to agree"
        )
    return ids[-1]


async def open_neptune_snapshot_reader(
    stack: AsyncExitStack,
    cfg: NeptuneSourceConfig,
    *,
    page_size: int,
    dead_letters: DeadLetterFile | None = None,
    timeout_seconds: float = 300.0,
) -> NeptuneSnapshotReader:
    """A reader of the source a `neptune` source config names, its client bound to `stack`."""
    client = await open_neptune_client(stack, cfg, timeout_seconds)
    return NeptuneSnapshotReader(client, source=cfg.name, page_size=page_size, dead_letters=dead_letters)
