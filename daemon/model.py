"""The one event type every source emits and every sink applies.

A `GraphChange` is one property-graph change-log operation, shaped after Neptune's PG_JSON records because that
is the finest grain any source has: a vertex label (`vl`), a vertex property (`vp`), an edge with its type and
endpoints (`e`) or an edge property (`ep`), each added or removed. Sources that see whole elements (DynamoDB
items) use two more kinds: a whole vertex (`vr`: one label and every property) and a whole edge (`er`: type,
endpoints and every property), whose ADD replaces what the element held and whose REMOVE deletes it (see
`daemon.mapping`). Sources translate into it; the scheduler coalesces and orders it; the Cypher layer turns
it into statements.

A `Position` is where a change sits in its source partition. Positions of one partition are totally ordered;
the checkpoint stores the greatest position at or before which everything is applied (DESIGN rule 2).
Neptune positions are `(commitNum, opNum)`; a DynamoDB shard's are `(sequence number,)` as a zero-padded
decimal string (sequence numbers have up to 40 digits, more than JSON integers carry), and `SHARD_END` marks a
shard read to its end and applied, like the sentinel of the Kinesis Client Library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERTEX_LABEL = "vl"
VERTEX_PROPERTY = "vp"
EDGE = "e"
EDGE_PROPERTY = "ep"
WHOLE_VERTEX = "vr"
WHOLE_EDGE = "er"
KINDS = frozenset({VERTEX_LABEL, VERTEX_PROPERTY, EDGE, EDGE_PROPERTY, WHOLE_VERTEX, WHOLE_EDGE})

# A position within one partition of a source; comparable as a tuple (all positions of a partition have one shape).
Position = tuple[int | str, ...]

# The checkpoint key of an event sink's branch of a source is SOURCE@SINK (docs/events.md).
LANE_SEPARATOR = "@"

SHARD_END: Position = ("SHARD_END",)  # sorts after every zero-padded sequence number
# Before the first record of a shard (read it from TRIM_HORIZON); sorts before every real sequence number, which
# is never zero. A bootstrap hands it off for the shards that were open when it recorded its position.
SHARD_START: Position = ("0" * 40,)


@dataclass(slots=True)
class GraphChange:
    """One change-log operation.

    `key` is the label for `vl` / `vr` and the relationship type for `e` / `er`; the property key for `vp` / `ep`.
    `value` is the property value already converted to a Python value (None for `vl` / `e`); for `vr` / `er`
    ADDs, the dict of every property the element holds.
    `from_id` / `to_id` are set for `e` and `er` (Neptune's `ep` records carry the edge id alone).
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
    # What the source record said beyond the change, for event sinks (a DynamoDB record: eventName, TTL expiry,
    # keys and images); not part of the change's identity or equality.
    origin: dict[str, Any] | None = field(default=None, compare=False, repr=False)

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
        if self.kind in (VERTEX_PROPERTY, EDGE_PROPERTY) or (self.add and self.kind in (WHOLE_VERTEX, WHOLE_EDGE)):
            out["value"] = self.value
        if self.kind in (EDGE, WHOLE_EDGE):
            out["from"] = self.from_id
            out["to"] = self.to_id
        return out


_new = object.__new__


def make_change(
    kind: str,
    add: bool,
    id: str,
    key: str,
    value: Any,
    from_id: str | None,
    to_id: str | None,
    position: Position,
    commit_ms: int,
    partition: str,
) -> GraphChange:
    """`GraphChange(kind, add, id, key, value, from_id, to_id, position, commit_ms, partition)` for the sources' hot
    paths: the same object without calling the dataclass `__init__` through the type (a class call costs more than
    the eleven slot stores; about 0.4 -> 0.25 us a change)."""
    change = _new(GraphChange)
    change.kind = kind
    change.add = add
    change.id = id
    change.key = key
    change.value = value
    change.from_id = from_id
    change.to_id = to_id
    change.position = position
    change.commit_ms = commit_ms
    change.partition = partition
    change.origin = None
    return change


@dataclass(slots=True)
class ChangeBatch:
    """What a source hands the pipeline: changes in source order and the position they reach.

    `position` is the position of the last record read in `partition`, which may be past the last change when
    records were dead-lettered or skipped at translation (None for a batch that only carries `caught_up`);
    `caught_up` says the source saw the head of every partition with this batch.
    `commit_complete` is False when the batch ends inside a source commit (a page boundary fell between two
    operations of one Neptune commit): the pipeline then waits for the rest of the commit before it applies.
    `more` says the source is behind: this batch is a full page and the next is being read at once (the
    pipeline then waits for it, briefly, to apply a catch-up in full windows).
    """

    partition: str
    changes: list[GraphChange]
    position: Position | None
    caught_up: bool = False
    head_position: Position | None = None
    commit_complete: bool = True
    holding: int = 0  # a shared shard: which holding of its lease it was read under (`is_current`)
    more: bool = False


class SourceStopped(RuntimeError):
    """A source cannot go on without losing changes (expired stream, unreadable input): it stops for good.

    The supervisor does not restart it; the message tells the operator what happened and what to do.
    """
