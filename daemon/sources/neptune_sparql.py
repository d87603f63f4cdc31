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
from daemon.values import INT64_MAX

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


def _well_formed_changes(records: list[dict[str, Any]], quads: list[Quad]) -> list[QuadChange] | None:
    """A page's changes when every record is well formed (nearly always), in one tight loop with the checks of
    `translate_sparql_record` inline (about a third of its cost a record); None sends the page the careful way,
    record by record, which names and dead-letters what is wrong."""
    changes: list[QuadChange] = []
    append = changes.append
    try:
        for record, quad in zip(records, quads, strict=True):
            event = record["eventId"]
            commit, op_num = event["commitNum"], event["opNum"]
            if commit.__class__ is not int or op_num.__class__ is not int or not 0 <= commit <= INT64_MAX:
                return None
            if not 0 <= op_num <= INT64_MAX:
                return None
            op = record["op"]
            if op != "ADD" and op != "REMOVE":
                return None
            commit_ms = record.get("commitTimestamp", record.get("commitTimestampInMillis", 0))
            append(QuadChange(op == "ADD", quad, (commit, op_num), commit_ms if commit_ms.__class__ is int else 0))
    except (KeyError, TypeError, AttributeError, ValueError):
        return None
    return changes


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
        parsed = parse_statements(stmts, self.blank_node_prefix)  # None: parse record by record
        if parsed is not None:
            changes = _well_formed_changes(records, parsed)
            if changes is not None:
                return changes
        self._parsed, self._index = parsed, 0
        try:
            return super()._translate(records)  # type: ignore[return-value]
        finally:
            self._parsed = None

    def _translate_one(self, record: dict[str, Any]) -> QuadChange:
        parsed, i = self._parsed, self._index
        self._index += 1
        return translate_sparql_record(record, self.blank_node_prefix, quad=None if parsed is None else parsed[i])
