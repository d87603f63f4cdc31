"""Neptune SPARQL stream source (`kind = "neptune-sparql"`): the RDF twin of `daemon.sources.neptune`.

It reads `GetSparqlStream` through the same `StreamReader` (resume after the checkpoint, 404 at the head is caught
up, a head behind the checkpoint and expiry are loud stops, throttling backs off) and the same page / caught-up /
dead-letter handling as the property-graph source; only the translation differs: each NQUADS record
(`{"data": {"stmt": "<s> <p> <o> <g> .\\n"}, "op": "ADD" | "REMOVE", "eventId": ...}`) becomes a
`daemon.rdf.QuadChange`, its statement read by pyoxigraph's N-Quads parser with blank nodes skolemised under the
source's prefix. A record that does not parse goes to the dead-letter file with its position and the reason.
"""

from __future__ import annotations

from typing import Any

from pyoxigraph import Quad

from daemon.config import NeptuneSparqlSourceConfig
from daemon.deadletter import DeadLetterFile
from daemon.rdf import MalformedStatement, QuadChange, default_blank_node_prefix, parse_statement, parse_statements
from daemon.sources.neptune import PARTITION, NeptuneStreamSource
from daemon.sources.pgjson import MalformedRecord, record_position

__all__ = ["NeptuneSparqlStreamSource", "translate_sparql_record"]


def translate_sparql_record(
    record: dict[str, Any], blank_node_prefix: str, partition: str = PARTITION, quad: Quad | None = None
) -> QuadChange:
    """One NQUADS stream record as a `QuadChange` (its statement already parsed when `quad` is given);
    `MalformedRecord` (with the position when readable)."""
    position = record_position(record)
    op = record.get("op")
    if op not in ("ADD", "REMOVE"):
        raise MalformedRecord(f'op must be "ADD" or "REMOVE", got {op!r}', position)
    data = record.get("data")
    stmt = data.get("stmt") if isinstance(data, dict) else None
    if not isinstance(stmt, str):
        raise MalformedRecord("record has no data.stmt string", position)
    if quad is None:
        try:
            quad = parse_statement(stmt, blank_node_prefix)
        except MalformedStatement as exc:
            raise MalformedRecord(exc.reason, position) from None
    commit_ms = record.get("commitTimestamp", record.get("commitTimestampInMillis", 0))
    return QuadChange(
        op == "ADD",
        quad,
        position,
        commit_ms if isinstance(commit_ms, int) and not isinstance(commit_ms, bool) else 0,
        partition,
    )


class NeptuneSparqlStreamSource(NeptuneStreamSource):
    """`NeptuneStreamSource` reading the SPARQL stream into `QuadChange`s."""

    def __init__(self, cfg: NeptuneSparqlSourceConfig, *, dead_letters: DeadLetterFile) -> None:
        super().__init__(cfg, dead_letters=dead_letters)  # type: ignore[arg-type]  # the stream settings are shared
        self.blank_node_prefix = cfg.blank_node_prefix or default_blank_node_prefix(cfg.name)
        self._parsed: list[Quad] | None = None  # the page being translated, parsed in one call
        self._index = 0

    def _translate(self, records: list[dict[str, Any]]) -> list[QuadChange]:  # type: ignore[override]
        stmts = [r.get("data", {}).get("stmt") if isinstance(r, dict) and isinstance(r.get("data"), dict) else None
                 for r in records]  # fmt: skip
        self._parsed = parse_statements(stmts, self.blank_node_prefix)  # None: parse record by record
        self._index = 0
        try:
            return super()._translate(records)  # type: ignore[return-value]
        finally:
            self._parsed = None

    def _translate_one(self, record: dict[str, Any]) -> QuadChange:
        parsed, i = self._parsed, self._index
        self._index += 1
        return translate_sparql_record(record, self.blank_node_prefix, quad=None if parsed is None else parsed[i])
