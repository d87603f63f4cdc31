"""Snapshot of a Neptune RDF (`neptune-sparql`) source: the SPARQL stream position first, then every quad.

Room in the design: bootstrap steps 1 and 2 for RDF sources, the twin of `daemon.bootstrap.neptune_reader`.

* **Position first.** `GetSparqlStream` with `iteratorType=LATEST` (the same rule as the property-graph reader,
  `stream_position`): `run` replays everything committed after it.
* **Quads by grouped keyset pages** through the source cluster's SPARQL endpoint (`<endpoint>/sparql`, SigV4 as
  the stream reads), in two passes that split the quads by a key taken from the quad itself:

  - quads whose subject is an IRI, keyed by `STR(?s)`;
  - quads whose subject is a blank node (which no query can name or turn into a string), keyed by `STR(?p)`
    (a predicate is always an IRI).

  A page is `SELECT ... FILTER(key > $last) ORDER BY key LIMIT n`. Keys are not unique, so a full page may end
  in the middle of its last key's group: the page's rows with that last key are dropped and the whole group is
  read by one query of its own (`GRAPH ?g { <s> ?p ?o }`, or `GRAPH ?g { ?s <p> ?o } FILTER(isBlank(?s))`), then
  the next page starts after it. So every key is covered by exactly one read, and each read is one query, which
  Neptune answers from one snapshot (read-only queries run under snapshot isolation): a quad present for the
  whole copy has a key, and the one read covering that key returns it, whatever is written meanwhile. OFFSET
  paging gives no such promise (a delete before the offset shifts an unchanged quad onto an already-read page).
  A group is held in memory whole (a subject's quads; a predicate's blank-subject quads): the known limit.
* Neptune's query-side default graph is the union of its named graphs, and every triple is stored in a named
  graph (`DefaultNamedGraph` for the default one), so `GRAPH ?g { ?s ?p ?o }` sees each quad once.
* Terms go through `daemon.rdf.normalise_quad`, as the stream's statements do: blank nodes become skolem IRIs
  under the source's prefix (the label the query answers is taken as the stream's label for the node, see
  docs/rdf.md) and `DefaultNamedGraph` the default graph. A quad that cannot be held (an RDF-star term) is
  dead-lettered with stage `snapshot`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import structlog
from pyoxigraph import Literal, NamedNode, Quad

from daemon.bootstrap.neptune_reader import stream_position
from daemon.bootstrap.records import BootstrapError
from daemon.bootstrap.retry import with_retries
from daemon.config import NeptuneSparqlSourceConfig
from daemon.deadletter import DeadLetterFile
from daemon.model import Position
from daemon.rdf import MalformedStatement, default_blank_node_prefix, normalise_quad
from daemon.sinks.sparql import SparqlClient, binding_term
from daemon.sources.stream_reader import open_neptune_client

log = structlog.get_logger("daemon.bootstrap.sparql")

PARTITION = ""


@dataclass(frozen=True, slots=True)
class KeyPass:
    """One pass over the quads: which quads (`where`), the key that orders them, and how a key's group is read."""

    name: str
    where: str  # FILTER condition selecting the pass's quads
    key: str  # the variable whose STR() is the key
    group: str  # a query reading one key's whole group; `{key}` is the key as an IRI


PASSES = (
    KeyPass("iri subjects", "isIRI(?s)", "s", "SELECT ?p ?o ?g WHERE {{ GRAPH ?g {{ {key} ?p ?o }} }}"),
    KeyPass(
        "blank-node subjects",
        "isBlank(?s)",
        "p",
        "SELECT ?s ?o ?g WHERE {{ GRAPH ?g {{ ?s {key} ?o }} FILTER(isBlank(?s)) }}",
    ),
)


class SparqlSnapshotReader:
    """`position_before()`, then `quads()`: pages of quads as the replica holds them."""

    def __init__(
        self,
        stream_client: Any,
        sparql: SparqlClient,
        *,
        query_url: str,
        source: str,
        blank_node_prefix: str,
        page_size: int = 5000,
        dead_letters: DeadLetterFile | None = None,
    ) -> None:
        self.stream_client = stream_client
        self.sparql = sparql
        self.query_url = query_url
        self.source = source
        self.prefix = blank_node_prefix
        self.page_size = page_size
        self.dead_letters = dead_letters
        self.dangling = 0  # the bootstrap's result reads it; quads have no endpoints to miss
        self.dead_lettered = 0
        self.read_seconds = 0.0
        self.queries = 0
        self.groups = 0  # keys whose group was read by a query of its own
        self.position: Position | None = None

    async def position_before(self) -> dict[str, Position]:
        self.position = await stream_position(self.stream_client, "get_sparql_stream", self.source)
        return {PARTITION: self.position}

    async def quads(self) -> AsyncIterator[list[Quad]]:
        for key_pass in PASSES:
            async for page in self._pass(key_pass):
                if page:
                    yield page

    async def _pass(self, p: KeyPass) -> AsyncIterator[list[Quad]]:
        last: str | None = None
        while True:
            after = "" if last is None else f" && STR(?{p.key}) > {Literal(last)}"
            rows = await self._select(
                f"SELECT ?s ?p ?o ?g WHERE {{ GRAPH ?g {{ ?s ?p ?o }} FILTER({p.where}{after}) }} "
                f"ORDER BY STR(?{p.key}) LIMIT {int(self.page_size)}"
            )
            if len(rows) < self.page_size:  # the whole rest of the pass, in one query
                yield self._quads(rows)
                return
            boundary = rows[-1][p.key]["value"]
            if boundary == last:
                raise BootstrapError(
                    f"source {self.source!r}: the SPARQL endpoint answered a page that does not move past key "
                    f"{last!r}; keyset paging needs ORDER BY STR() and FILTER(STR() > ...) to agree"
                )
            cut = len(rows)
            while cut and rows[cut - 1][p.key]["value"] == boundary:
                cut -= 1
            yield self._quads(rows[:cut])
            group = await self._select(p.group.format(key=NamedNode(boundary)))
            self.groups += 1
            for row in group:
                row[p.key] = {"type": "uri", "value": boundary}
            yield self._quads(group)
            last = boundary

    async def _select(self, query: str) -> list[dict[str, Any]]:
        started = time.perf_counter()
        document = await with_retries(lambda: self.sparql.select(self.query_url, query), what="snapshot query")
        self.read_seconds += time.perf_counter() - started
        self.queries += 1
        return list(document.get("results", {}).get("bindings", []))

    def _quads(self, rows: list[dict[str, Any]]) -> list[Quad]:
        out: list[Quad] = []
        for row in rows:
            try:
                terms = [binding_term(row[name]) for name in ("s", "p", "o", "g")]
                out.append(normalise_quad(Quad(*terms), self.prefix))
            except (KeyError, ValueError, TypeError, MalformedStatement) as exc:
                self._dead_letter(row, str(exc))
        return out

    def _dead_letter(self, row: dict[str, Any], reason: str) -> None:
        self.dead_lettered += 1
        log.error("snapshot quad cannot be replicated", source=self.source, row=row, error=reason)
        if self.dead_letters is not None:
            self.dead_letters.write(
                stage="snapshot",
                source=self.source,
                reason=f"unsupported quad: {reason}",
                entries=[{"position": list(self.position or ()), "row": row}],
            )


async def open_sparql_snapshot_reader(
    stack: AsyncExitStack,
    cfg: NeptuneSparqlSourceConfig,
    *,
    page_size: int,
    dead_letters: DeadLetterFile | None = None,
    timeout_seconds: float = 300.0,
) -> SparqlSnapshotReader:
    """A reader of the source a `neptune-sparql` source config names: its stream client and a SigV4-signed SPARQL
    client of `<endpoint>/sparql`, both bound to `stack`."""
    stream_client = await open_neptune_client(stack, cfg, timeout_seconds)
    sparql = SparqlClient(
        f"source {cfg.name}", sigv4_region=cfg.region, profile=cfg.profile, timeout_seconds=timeout_seconds
    )
    await sparql.start()
    stack.push_async_callback(sparql.close)
    return SparqlSnapshotReader(
        stream_client,
        sparql,
        query_url=str(cfg.endpoint).rstrip("/") + "/sparql",
        source=cfg.name,
        blank_node_prefix=cfg.blank_node_prefix or default_blank_node_prefix(cfg.name),
        page_size=page_size,
        dead_letters=dead_letters,
    )
