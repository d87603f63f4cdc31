"""`GraphChange` -> CloudEvents 1.0, JSON structured mode (docs/events.md, docs/cloudevents.schema.json).

One change is one event. `id` is built from the source name, the partition, the change's position and its
index among the changes of that position (a DynamoDB record can map to several changes), so the same change read
again after a restart gets the same id and consumers can de-duplicate replays. `type` names the element, the
aspect and the operation: `graph.vertex.label.added`, `graph.vertex.property.removed`, `graph.edge.added`,
`graph.vertex.upserted` (a whole DynamoDB item mapped to a vertex) and so on (`EVENT_TYPES`). `subject` is the
element id; `time` the source commit time (RFC 3339, UTC; absent when the source does not say).

`Route` is a sink's filter: type globs, labels / edge types, property keys, and for DynamoDB sources the stream
record's `eventName` and whether it is a TTL deletion; every filter that is set must match.
"""

from __future__ import annotations

import fnmatch
import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.model import (
    EDGE,
    EDGE_PROPERTY,
    VERTEX_LABEL,
    VERTEX_PROPERTY,
    WHOLE_EDGE,
    WHOLE_VERTEX,
    GraphChange,
)
from daemon.values import show

SPEC_VERSION = "1.0"
TYPE_PREFIX = "graph"
SOURCE_PREFIX = "graph-replicator"

# kind -> (element, aspect or "", type suffix for ADD, for REMOVE)
_TYPES: dict[str, tuple[str, str, str, str]] = {
    VERTEX_LABEL: ("vertex", "label", "added", "removed"),
    VERTEX_PROPERTY: ("vertex", "property", "added", "removed"),
    EDGE: ("edge", "", "added", "removed"),
    EDGE_PROPERTY: ("edge", "property", "added", "removed"),
    WHOLE_VERTEX: ("vertex", "", "upserted", "removed"),
    WHOLE_EDGE: ("edge", "", "upserted", "removed"),
}


_TYPE_NAMES = {
    (kind, add): ".".join([TYPE_PREFIX, element, *([aspect] if aspect else []), added if add else removed])
    for kind, (element, aspect, added, removed) in _TYPES.items()
    for add in (True, False)
}


def event_type(change: GraphChange) -> str:
    return _TYPE_NAMES[(change.kind, change.add)]


@functools.lru_cache(maxsize=4096)
def _time_text(commit_ms: int) -> str:
    """RFC 3339 in UTC with milliseconds (many changes share a commit time: cached)."""
    second, millis = divmod(commit_ms, 1000)
    return f"{_second_text(second)}.{millis:03d}Z"


@functools.lru_cache(maxsize=256)
def _second_text(second: int) -> str:
    """The date and time of one second (the commits of a window mostly fall within a few seconds: cached)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


EVENT_TYPES = sorted(
    {
        ".".join([TYPE_PREFIX, element, *([aspect] if aspect else []), op])
        for element, aspect, added, removed in _TYPES.values()
        for op in (added, removed)
    }
)


def _position_text(position: tuple[Any, ...]) -> str:
    if len(position) == 2:  # Neptune's (commitNum, opNum): most events
        return f"{position[0]}.{position[1]}"
    return ".".join(map(str, position))


def event_id(source: str, change: GraphChange, index: int) -> str:
    """`source/partition/p1.p2/index`: stable for a change whatever page or window it was read in."""
    return f"{source}/{change.partition}/{_position_text(change.position)}/{index}"


_LABEL, _ENDPOINTS, _PROPERTY = 0, 1, 2  # what a kind's `data` carries beyond the common fields
# kind -> (element, what, {add: type name}, whether an ADD / a REMOVE carries `value`)
_SHAPES: dict[str, tuple[str, int, dict[bool, str], tuple[bool, bool]]] = {
    kind: (
        element,
        _LABEL if kind in (VERTEX_LABEL, WHOLE_VERTEX) else _ENDPOINTS if kind in (EDGE, WHOLE_EDGE) else _PROPERTY,
        {True: _TYPE_NAMES[(kind, True)], False: _TYPE_NAMES[(kind, False)]},
        (kind in (VERTEX_PROPERTY, EDGE_PROPERTY, WHOLE_VERTEX, WHOLE_EDGE), kind in (VERTEX_PROPERTY, EDGE_PROPERTY)),
    )
    for kind, (element, *_rest) in _TYPES.items()
}


def to_event(source: str, change: GraphChange, index: int) -> dict[str, Any]:
    """The CloudEvent of one change (a JSON-ready dict)."""
    return _build(f"{source}/", f"{SOURCE_PREFIX}/{source}", change, index)


def _build(id_prefix: str, source_text: str, change: GraphChange, index: int) -> dict[str, Any]:
    """`to_event` with the source's parts of the id and `source` made once (`events_of` calls it per change)."""
    element, what, names, with_value = _SHAPES[change.kind]
    add = change.add
    position = change.position
    data: dict[str, Any] = {
        "kind": element,
        "record": change.kind,
        "op": "ADD" if add else "REMOVE",
        "id": change.id,
        "position": list(position),
    }
    if change.partition:
        data["partition"] = change.partition
    if what == _LABEL:
        data["label"] = change.key
    elif what == _ENDPOINTS:
        data["type"] = change.key
        data["from"] = change.from_id
        data["to"] = change.to_id
    else:
        data["key"] = change.key
    if with_value[0] if add else with_value[1]:
        value = change.value
        data["value"] = value if type(value) is str else json_value(value)
    if change.origin is not None:  # a DynamoDB record: eventName, TTL expiry, keys and images as the stream has them
        data["dynamodb"] = {k: v for k, v in change.origin.items() if v is not None}
    event: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": f"{id_prefix}{change.partition}/{_position_text(position)}/{index}",
        "source": source_text,
        "type": names[add],
        "subject": change.id,
        "datacontenttype": "application/json",
        "data": data,
    }
    if change.commit_ms:
        event["time"] = _time_text(change.commit_ms)
    return event


def json_value(value: Any) -> Any:
    """A property value as JSON: scalars, lists and maps as they are; bytes, dates and anything else as text
    (`daemon.values.show`), so an event can always be encoded."""
    if value is None or type(value) is str or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return show(value)


@dataclass(frozen=True, slots=True)
class Route:
    """Which changes a sink takes. Empty filters take everything; each filter that is set must match:
    `types` (globs on the event type), `labels` (the label of a `vl` / whole-vertex change, the type of an edge
    or whole-edge change; property changes carry no label and do not match), `properties` (the key of a
    property change; other changes do not match), `event_names` (the DynamoDB stream record's INSERT / MODIFY /
    REMOVE; a change of another source has none and does not match), `ttl` (True: only deletions by DynamoDB
    TTL; False: everything but them)."""

    types: tuple[str, ...] = ()
    labels: frozenset[str] = frozenset()
    properties: frozenset[str] = frozenset()
    event_names: frozenset[str] = frozenset()
    ttl: bool | None = None

    @classmethod
    def of(
        cls,
        types: Iterable[str] = (),
        labels: Iterable[str] = (),
        properties: Iterable[str] = (),
        event_names: Iterable[str] = (),
        ttl: bool | None = None,
    ) -> Route:
        return cls(tuple(types), frozenset(labels), frozenset(properties), frozenset(event_names), ttl)

    @property
    def everything(self) -> bool:
        return not (self.types or self.labels or self.properties or self.event_names) and self.ttl is None

    def accepts(self, change: GraphChange) -> bool:
        if self.types and not any(fnmatch.fnmatchcase(event_type(change), t) for t in self.types):
            return False
        if self.labels and (change.kind in (VERTEX_PROPERTY, EDGE_PROPERTY) or change.key not in self.labels):
            return False
        if self.properties and not (change.kind in (VERTEX_PROPERTY, EDGE_PROPERTY) and change.key in self.properties):
            return False
        origin = change.origin
        if self.event_names and (origin is None or origin.get("eventName") not in self.event_names):
            return False
        return self.ttl is None or self.ttl == bool(origin is not None and origin.get("ttl"))


def events_of(source: str, changes: Sequence[GraphChange], route: Route) -> list[dict[str, Any]]:
    """The events of changes in source order, routed. The index of a change counts the changes before it with
    the same position in `changes` (all changes of one source record are always handed over together)."""
    out: list[dict[str, Any]] = []
    append = out.append
    id_prefix, source_text = f"{source}/", f"{SOURCE_PREFIX}/{source}"
    index, last_partition, last_position = 0, None, None
    everything = route.everything
    for change in changes:
        if change.position == last_position and change.partition == last_partition:
            index += 1
        else:
            index, last_partition, last_position = 0, change.partition, change.position
        if everything or route.accepts(change):
            append(_build(id_prefix, source_text, change, index))
    return out
