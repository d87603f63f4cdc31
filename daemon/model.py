"""The one event type every source emits and every sink applies.

A `GraphChange` is one property-graph change-log operation, shaped after Neptune's PG_JSON records because that
is the finest grain any source has: a vertex label (`vl`), a vertex property (`vp`), an edge with its type and
endpoints (`e`) or an edge property (`ep`), each added or removed. Sources translate into it; the scheduler
coalesces and orders it; the Cypher layer turns it into statements.

A `Position` is where a change sits in its source partition. Positions of one partition are totally ordered;
the checkpoint stores the greatest position at or before which everything is applied (DESIGN rule 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VERTEX_LABEL = "vl"
VERTEX_PROPERTY = "vp"
EDGE = "e"
EDGE_PROPERTY = "ep"
KINDS = frozenset({VERTEX_LABEL, VERTEX_PROPERTY, EDGE, EDGE_PROPERTY})

# A position within one partition of a source: Neptune's (commitNum, opNum); comparable as a tuple.
Position = tuple[int, ...]


@dataclass(slots=True)
class GraphChange:
    """One change-log operation.

    `key` is the label for `vl` and the relationship type for `e`; the property key for `vp` and `ep`.
    `value` is the property value already converted to a Python value (None for `vl` / `e`).
    `from_id` / `to_id` are set for `e` only (Neptune's `ep` records carry the edge id alone).
    `commit_ms` is the source commit time in epoch milliseconds (0 when the source does not say).
    """

    kind: str
    add: bool
    id: str
    key: str
    value: Any = None
    from_id: str | None = None
    to_id: str | None = None
    position: Position = (0, 0)
    commit_ms: int = 0
    partition: str = ""

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description for the dead-letter file and logs."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "op": "ADD" if self.add else "REMOVE",
            "id": self.id,
            "key": self.key,
            "position": list(self.position),
        }
        if self.partition:
            out["partition"] = self.partition
        if self.kind in (VERTEX_PROPERTY, EDGE_PROPERTY):
            out["value"] = self.value
        if self.kind == EDGE:
            out["from"] = self.from_id
            out["to"] = self.to_id
        return out


@dataclass(slots=True)
class ChangeBatch:
    """What a source hands the pipeline: changes in source order and the position they reach.

    `position` is the position of the last record read, which may be past the last change when records were
    dead-lettered at translation; `caught_up` says the source saw the head of its stream with this batch.
    """

    partition: str
    changes: list[GraphChange]
    position: Position
    caught_up: bool = False
    head_position: Position | None = None


class SourceStopped(RuntimeError):
    """A source cannot go on without losing changes (expired stream, unreadable input): it stops for good.

    The supervisor does not restart it; the message tells the operator what happened and what to do.
    """
