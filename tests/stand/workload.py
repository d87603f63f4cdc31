"""Seeded random Neptune change logs and the reference model of the graph they build.

The convergence tests work like this: `generate_history` emits a random but deterministic (per seed) change
log in Neptune's PG_JSON shape together with the graph it builds (`History.reference`); the daemon replicates
the log into a target; `tests.stand.comparator` reads the target back and diffs it against the reference.

How the log is serialised (this is how Neptune writes changes, and the daemon relies on it):

* create a vertex: one `vl` ADD per label (``key`` "label", the label in ``value.value``), then one `vp` ADD
  per property, in one commit;
* add / remove a label: `vl` ADD / REMOVE (a vertex never loses its last label except when it is dropped);
* set a single-valued property: `vp` REMOVE with the *old* value (when there was one), then `vp` ADD with the
  new value, in one commit; remove a property: `vp` REMOVE with its current value;
* add an edge: `e` ADD (``key`` "label", the type in ``value.value``, ``from`` / ``to`` set; both endpoints
  exist), then `ep` ADD per property (`ep` records carry the edge id, key and value only); edge properties are
  set and removed like vertex properties; remove an edge: `ep` REMOVE per property, then `e` REMOVE;
* drop a vertex: for every incident edge its `ep` REMOVEs then its `e` REMOVE, then `vp` REMOVE per property,
  then `vl` REMOVE per label, all in one commit.

Dropped vertex ids are re-created (with new labels and properties) and get new edges; dropped edge ids are
re-used. Property values cover every PG_JSON data type the daemon documents (`daemon.values`); non-finite
doubles travel as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` so that every record stays valid
JSON. Stream records follow Neptune: ``opNum`` starts at 1 in every commit and ``isLastOp: true`` is present
on the last operation of a commit only.

Determinism: all choices come from one `random.Random(seed)` and every collection the generator iterates is
insertion-ordered (no iteration over sets), so a seed gives the same history in every process, whatever
PYTHONHASHSEED is.
"""

from __future__ import annotations

import gc
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from daemon.values import INT64_MAX, INT64_MIN, from_pg_json

__all__ = [
    "DATA_TYPES",
    "Edge",
    "History",
    "InconsistentOp",
    "ReferenceGraph",
    "Vertex",
    "generate_history",
    "values_equal",
    "without_gc",
]

# ----------------------------------------------------------------------------------------------------
# Reference model
# ----------------------------------------------------------------------------------------------------


@contextmanager
def without_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector.

    Building or reading a large graph allocates millions of acyclic dicts, and the collector would rescan them
    over and over (it doubled the generation time of 200,000 changes).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class InconsistentOp(ValueError):
    """An op a Neptune change log cannot contain at this point (raised by a strict `ReferenceGraph`)."""


def values_equal(a: Any, b: Any) -> bool:
    """Exact, type-aware equality of two stored property values: ``1 != 1.0 != True``, NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


@dataclass(slots=True)
class Vertex:
    """A vertex of the reference graph; it exists while it has at least one label."""

    labels: frozenset[str]
    props: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Edge:
    """An edge of the reference graph; endpoints are vertex ids."""

    type: str
    from_id: str
    to_id: str
    props: dict[str, Any] = field(default_factory=dict)


class ReferenceGraph:
    """The graph a PG_JSON change log builds, with values as `daemon.values.from_pg_json` converts them.

    `apply` takes one op (``{"op": "ADD"|"REMOVE", "data": {...}}``; a full stream record works too). In
    strict mode (the default) an op that a Neptune log cannot hold at that point raises `InconsistentOp`: a
    label or property ADD for one that is present (a property is set by REMOVE-old then ADD-new), a REMOVE of
    something absent or with another value, an edge whose endpoint does not exist, an edge removed while it
    still has properties, a vertex losing its last label while it still has properties or edges. With
    ``strict=False`` the same semantics are applied leniently: ADD overwrites, a REMOVE of something absent is
    ignored, an `e` ADD with a missing endpoint or a `vp`/`ep` for a missing element is ignored, and a vertex
    that loses its last label is deleted with its properties and incident edges (what DETACH DELETE does).

    `problems` holds structural problems found while building the graph some other way (the comparator reads
    targets into a `ReferenceGraph` and records duplicate ids and the like there).
    """

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        self.vertices: dict[str, Vertex] = {}
        self.edges: dict[str, Edge] = {}
        self.problems: list[str] = []
        self._incident: dict[str, dict[str, None]] = {}  # vertex id -> ids of its edges (both directions)

    # -- queries -----------------------------------------------------------------------------------

    def incident_edges(self, vertex_id: str) -> list[str]:
        """Ids of the edges that start or end at `vertex_id`."""
        return list(self._incident.get(vertex_id, ()))

    def __repr__(self) -> str:
        return f"<ReferenceGraph {len(self.vertices)} vertices, {len(self.edges)} edges>"

    # -- building ----------------------------------------------------------------------------------

    def add_vertex(self, vertex_id: str, labels: Iterable[str], props: dict[str, Any] | None = None) -> None:
        """Put a vertex directly (used by readers of targets; duplicates are recorded in `problems`)."""
        if vertex_id in self.vertices:
            self.problems.append(f"two vertices have id {vertex_id!r}")
        self.vertices[vertex_id] = Vertex(frozenset(labels), dict(props or {}))

    def add_edge(self, edge_id: str, type_: str, from_id: str, to_id: str, props: dict[str, Any] | None = None) -> None:
        """Put an edge directly (used by readers of targets; duplicates are recorded in `problems`)."""
        old = self.edges.get(edge_id)
        if old is not None:
            self.problems.append(f"two edges have id {edge_id!r}")
            self._unlink(edge_id, old)
        self.edges[edge_id] = Edge(type_, from_id, to_id, dict(props or {}))
        self._incident.setdefault(from_id, {})[edge_id] = None
        self._incident.setdefault(to_id, {})[edge_id] = None

    def apply_all(self, ops: Iterable[dict[str, Any]]) -> ReferenceGraph:
        """Apply ops in order; returns self."""
        for op in ops:
            self.apply(op)
        return self

    def apply(self, op: dict[str, Any]) -> None:
        """Apply one PG_JSON op (see the class doc)."""
        data = op["data"]
        add = op["op"] == "ADD"
        kind = data["type"]
        if kind == "vl":
            self._apply_label(data["id"], data["value"]["value"], add)
        elif kind == "vp" or kind == "ep":
            value_obj = data["value"]
            value = from_pg_json(value_obj.get("dataType", "String"), value_obj["value"])
            target = self.vertices.get(data["id"]) if kind == "vp" else self.edges.get(data["id"])
            self._apply_property(kind, data["id"], target, data["key"], value, add)
        elif kind == "e":
            self._apply_edge(data["id"], data["value"]["value"], data["from"], data["to"], add)
        else:
            raise InconsistentOp(f"unknown record type {kind!r}")

    def _fail(self, message: str) -> None:
        if self.strict:
            raise InconsistentOp(message)

    def _apply_label(self, vertex_id: str, label: str, add: bool) -> None:
        vertex = self.vertices.get(vertex_id)
        if add:
            if vertex is None:
                self.vertices[vertex_id] = Vertex(frozenset((label,)))
            elif label in vertex.labels:
                self._fail(f"vertex {vertex_id!r} already has label {label!r}")
            else:
                vertex.labels = vertex.labels | {label}
            return
        if vertex is None or label not in vertex.labels:
            self._fail(f"vertex {vertex_id!r} has no label {label!r} to remove")
            return
        labels = vertex.labels - {label}
        if labels:
            vertex.labels = labels
            return
        edges = self._incident.get(vertex_id)
        if vertex.props or edges:
            self._fail(
                f"vertex {vertex_id!r} loses its last label with {len(vertex.props)} properties "
                f"and {len(edges or ())} edges left"
            )
        for edge_id in list(edges or ()):
            self._unlink(edge_id, self.edges.pop(edge_id))
        del self.vertices[vertex_id]

    def _apply_property(
        self, kind: str, element_id: str, target: Vertex | Edge | None, key: str, value: Any, add: bool
    ) -> None:
        what = "vertex" if kind == "vp" else "edge"
        if target is None:
            self._fail(f"{kind} {'ADD' if add else 'REMOVE'} {key!r} for missing {what} {element_id!r}")
            return
        props = target.props
        if add:
            if key in props:
                self._fail(f"{what} {element_id!r} property {key!r} added while it holds {props[key]!r}")
            props[key] = value
            return
        if key not in props:
            self._fail(f"{what} {element_id!r} has no property {key!r} to remove")
            return
        if not values_equal(props[key], value):
            self._fail(f"{what} {element_id!r} property {key!r} removed with {value!r}, holds {props[key]!r}")
            return  # a REMOVE of a value the element does not hold changes nothing
        del props[key]

    def _apply_edge(self, edge_id: str, type_: str, from_id: str, to_id: str, add: bool) -> None:
        edge = self.edges.get(edge_id)
        if add:
            missing = [v for v in (from_id, to_id) if v not in self.vertices]
            if missing:
                self._fail(f"edge {edge_id!r} added with missing endpoint(s) {missing!r}")
                return
            if edge is not None:
                self._fail(f"edge {edge_id!r} added while it exists")
                self._unlink(edge_id, edge)
            self.edges[edge_id] = Edge(type_, from_id, to_id)
            self._incident.setdefault(from_id, {})[edge_id] = None
            self._incident.setdefault(to_id, {})[edge_id] = None
            return
        if edge is None:
            self._fail(f"edge {edge_id!r} removed while absent")
            return
        if (edge.type, edge.from_id, edge.to_id) != (type_, from_id, to_id):
            self._fail(
                f"edge {edge_id!r} removed as {type_!r} {from_id!r}->{to_id!r}, "
                f"is {edge.type!r} {edge.from_id!r}->{edge.to_id!r}"
            )
        if edge.props:
            self._fail(f"edge {edge_id!r} removed with properties {sorted(edge.props)!r} left")
        del self.edges[edge_id]
        self._unlink(edge_id, edge)

    def _unlink(self, edge_id: str, edge: Edge) -> None:
        for vertex_id in (edge.from_id, edge.to_id):
            incident = self._incident.get(vertex_id)
            if incident is not None:
                incident.pop(edge_id, None)
                if not incident:
                    del self._incident[vertex_id]


# ----------------------------------------------------------------------------------------------------
# History
# ----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class History:
    """A generated change log: `commits` of PG_JSON ops, their commit times and the graph they build.

    `stats` counts logical operations (``create_vertex``, ``recreate_vertex``, ``drop_vertex``, ...).
    """

    seed: int
    commits: list[list[dict[str, Any]]]
    commit_ms: list[int]
    reference: ReferenceGraph
    stats: Counter[str] = field(default_factory=Counter)

    @property
    def n_records(self) -> int:
        """Total number of ops over all commits."""
        return sum(len(ops) for ops in self.commits)

    def ops(self) -> Iterator[dict[str, Any]]:
        """Every op in log order."""
        for ops in self.commits:
            yield from ops

    def records(self, first_commit_num: int = 1) -> Iterator[dict[str, Any]]:
        """Full Neptune stream records (fresh dicts; ``data`` is shared with `commits`)."""
        for index, (ops, stamp) in enumerate(zip(self.commits, self.commit_ms, strict=True)):
            commit_num = first_commit_num + index
            last = len(ops)
            for op_num, op in enumerate(ops, start=1):
                record: dict[str, Any] = {
                    "commitTimestamp": stamp,
                    "eventId": {"commitNum": commit_num, "opNum": op_num},
                    "data": op["data"],
                    "op": op["op"],
                }
                if op_num == last:
                    record["isLastOp"] = True
                yield record

    def record_counts(self) -> Counter[str]:
        """Ops per ``"<type> <op>"``, e.g. ``"vp REMOVE"``."""
        return Counter(f"{op['data']['type']} {op['op']}" for op in self.ops())


# ----------------------------------------------------------------------------------------------------
# Names and values
# ----------------------------------------------------------------------------------------------------

_PLAIN_LABELS = ("Person", "Company", "Product", "City", "Tag", "Account", "vertex", "Order")
_WEIRD_LABELS = (
    "Big Company", "O'Reilly", 'Say "Hi"', "back`tick", "100% Pure", "%60", "Café", "日本", "🚀 Rocket",
    "MATCH", "DELETE", "`RETURN`", "null", "a:b", "replicated",
)  # fmt: skip
_PLAIN_TYPES = ("KNOWS", "WORKS_AT", "BOUGHT", "LIVES_IN", "TAGGED", "follows")
_WEIRD_TYPES = (
    "likes it", "it's", 'quoted "t"', "back`tick", "50%", "%25", "関係", "❤️", "MATCH", "RETURN", "null",
    "DELETE", "`CREATE`",
)  # fmt: skip
_PLAIN_KEYS = (
    "name", "age", "score", "active", "created", "email", "weight", "since", "count", "id", "label",
)  # fmt: skip
_WEIRD_KEYS = (
    "first name", "it's", 'say "x"', "tick`", "%", "%25", "prénom", "名前", "🔥", "MATCH", "RETURN", "null",
    "DELETE", "`id`", "~label", "a.b",
)  # fmt: skip
_RESERVED_LABELS = frozenset({"Replicated", "__Vertex"})
_RESERVED_KEYS = frozenset({"~id"})

_STRINGS = (
    "", "plain", "it's", 'say "hi"', "back`tick", "line1\nline2", "tab\there", "emoji 😀🚀", "日本語テキスト",
    "Ünïcödé", "back\\slash", "%60 and %25", "null", "NULL", "MATCH (n) DETACH DELETE n", "  padded  ", "42",
    "true", "1.5", "'; DROP GRAPH g; --", "x" * 1000,
)  # fmt: skip
_DOUBLES = (
    0.0, -0.0, 0.1, 1.5, -2.25, 1.0, 2.0, 1e100, -1e-100, 5e-324, 2.2250738585072014e-308,
    1.7976931348623157e308, -1.7976931348623157e308, 9007199254740993.0, 3.141592653589793,
)  # fmt: skip
_FLOATS = (0.0, 0.5, -1.25, 3.4028234663852886e38, 1.401298464324817e-45, 1.1754943508222875e-38, 0.1)
_NON_FINITE = ("NaN", "Infinity", "-Infinity")
_INT_RANGES = {
    "Byte": (-(2**7), 2**7 - 1),
    "Short": (-(2**15), 2**15 - 1),
    "Int": (-(2**31), 2**31 - 1),
    "Long": (INT64_MIN, INT64_MAX),
}
# dataType -> relative weight
DATA_TYPES: dict[str, int] = {
    "String": 30, "Bool": 6, "Byte": 4, "Short": 4, "Int": 12, "Long": 10,
    "Float": 6, "Double": 14, "Date": 8,
}  # fmt: skip
_TYPE_NAMES = list(DATA_TYPES)
_TYPE_CUM_WEIGHTS = [sum(list(DATA_TYPES.values())[: i + 1]) for i in range(len(DATA_TYPES))]


def _raw_value(rng: random.Random, data_type: str) -> Any:
    """A raw PG_JSON value of `data_type` (JSON-serialisable)."""
    roll = rng.random()
    if data_type == "String":
        if roll < 0.5:
            return rng.choice(_STRINGS)
        return f"s{rng.randrange(1_000_000)}"
    if data_type == "Bool":
        return roll < 0.5
    if data_type in _INT_RANGES:
        lo, hi = _INT_RANGES[data_type]
        if roll < 0.1:
            return lo if roll < 0.05 else hi
        if roll < 0.2:
            return rng.choice((0, -1, 1))
        if data_type == "Long" and roll < 0.6:
            return rng.randint(-(2**53), 2**53) * rng.choice((1, 1023))
        return rng.randint(lo, hi)
    if data_type == "Double":
        if roll < 0.04:
            return rng.choice(_NON_FINITE)
        if roll < 0.3:
            return rng.choice(_DOUBLES)
        if roll < 0.6:
            return round(rng.uniform(-1e6, 1e6), rng.randrange(0, 6))
        return rng.random() * 10.0 ** rng.randint(-300, 300) * rng.choice((1, -1))
    if data_type == "Float":
        if roll < 0.03:
            return rng.choice(_NON_FINITE)
        if roll < 0.2:
            return rng.choice(_FLOATS)
        return round(rng.uniform(-1e4, 1e4), rng.randrange(0, 4))  # short decimals, as Java prints floats
    if data_type == "Date":
        if roll < 0.5:
            return rng.randrange(0, 4_102_444_800_000)  # epoch ms up to 2100
        year, month, day = rng.randint(1900, 2099), rng.randint(1, 12), rng.randint(1, 28)
        if roll < 0.6:
            return f"{year:04d}-{month:02d}-{day:02d}"
        hms = f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
        if roll < 0.8:
            return f"{year:04d}-{month:02d}-{day:02d}T{hms}Z"
        return f"{year:04d}-{month:02d}-{day:02d}T{hms}.{rng.randrange(1000):03d}Z"
    raise ValueError(f"no generator for dataType {data_type!r}")


def _vertex_id_pool(n: int, weird: bool) -> list[str]:
    """`n` distinct vertex ids; with `weird`, some carry spaces, quotes, unicode, backticks and percents."""
    if not weird:
        return [f"v{i}" for i in range(n)]
    shapes = ("v{}", "v {}", "v'{}", 'v"{}"', "vé{}", "頂点{}", "v`{}", "v%{}", "v{}", "🙂{}", "v\\{}", "v{}")
    return [shapes[i % len(shapes)].format(i) for i in range(n)]


def _edge_id(n: int, weird: bool) -> str:
    if weird and n % 5 == 0:
        return ("e {}", "e'{}", "é{}", "e`{}", "e%{}")[(n // 5) % 5].format(n)
    return f"e{n}"


# ----------------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------------


class _Pool:
    """Insertion-ordered set with O(1) add, remove and uniform random choice."""

    __slots__ = ("_index", "_items")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: str) -> bool:
        return item in self._index

    def add(self, item: str) -> None:
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def remove(self, item: str) -> None:
        pos = self._index.pop(item)
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._index[last] = pos

    def choice(self, rng: random.Random) -> str:
        return self._items[rng.randrange(len(self._items))]

    def pop_random(self, rng: random.Random) -> str:
        item = self.choice(rng)
        self.remove(item)
        return item


@dataclass(slots=True)
class _GenVertex:
    labels: list[str]
    props: dict[str, dict[str, Any]]  # key -> raw PG_JSON value object
    edges: dict[str, None]  # incident edge ids, insertion-ordered


@dataclass(slots=True)
class _GenEdge:
    type: str
    from_id: str
    to_id: str
    props: dict[str, dict[str, Any]]


def _names(plain: tuple[str, ...], weird: tuple[str, ...], use_weird: bool, reserved: frozenset[str]) -> list[str]:
    names = list(plain) + (list(weird) if use_weird else [])
    assert all(name and name not in reserved for name in names)
    return names


class _Generator:
    """State of one history being generated; `reference` is kept in step with every emitted op."""

    def __init__(self, seed: int, n_vertex_ids: int, weird: bool) -> None:
        self.rng = random.Random(seed)
        self.weird = weird
        self.labels = _names(_PLAIN_LABELS, _WEIRD_LABELS, weird, _RESERVED_LABELS)
        self.types = _names(_PLAIN_TYPES, _WEIRD_TYPES, weird, _RESERVED_LABELS)
        self.keys = _names(_PLAIN_KEYS, _WEIRD_KEYS, weird, _RESERVED_KEYS)
        self.n_vertex_ids = n_vertex_ids
        self.fresh_ids = _vertex_id_pool(n_vertex_ids, weird)
        self.fresh_ids.reverse()  # pop() hands them out in order v0, v1, ...
        self.dropped_ids = _Pool()
        self.live = _Pool()
        self.vertices: dict[str, _GenVertex] = {}
        self.edges: dict[str, _GenEdge] = {}
        self.live_edges = _Pool()
        self.dropped_edge_ids = _Pool()
        self.next_edge = 0
        self.reference = ReferenceGraph()
        self.stats: Counter[str] = Counter()
        self.ops: list[dict[str, Any]] = []

    # -- emitting ----------------------------------------------------------------------------------

    def _emit(self, op: str, data: dict[str, Any]) -> None:
        entry = {"op": op, "data": data}
        self.reference.apply(entry)
        self.ops.append(entry)

    def _label_op(self, op: str, vertex_id: str, label: str) -> None:
        value = {"value": label, "dataType": "String"}
        self._emit(op, {"id": vertex_id, "type": "vl", "key": "label", "value": value})

    def _prop_op(self, op: str, kind: str, element_id: str, key: str, value_obj: dict[str, Any]) -> None:
        self._emit(op, {"id": element_id, "type": kind, "key": key, "value": dict(value_obj)})

    def _edge_op(self, op: str, edge_id: str, edge: _GenEdge) -> None:
        self._emit(
            op,
            {
                "id": edge_id,
                "type": "e",
                "key": "label",
                "value": {"value": edge.type, "dataType": "String"},
                "from": edge.from_id,
                "to": edge.to_id,
            },
        )

    def _new_value(self) -> dict[str, Any]:
        data_type = self.rng.choices(_TYPE_NAMES, cum_weights=_TYPE_CUM_WEIGHTS)[0]
        return {"value": _raw_value(self.rng, data_type), "dataType": data_type}

    def _set_prop(self, kind: str, element_id: str, props: dict[str, dict[str, Any]], key: str) -> None:
        old = props.get(key)
        if old is not None:
            self._prop_op("REMOVE", kind, element_id, key, old)
        new = self._new_value()
        props[key] = new
        self._prop_op("ADD", kind, element_id, key, new)

    # -- logical operations ------------------------------------------------------------------------

    def create_vertex(self) -> None:
        rng = self.rng
        if self.fresh_ids and (not self.dropped_ids or rng.random() < 0.5):
            vertex_id = self.fresh_ids.pop()
            self.stats["create_vertex"] += 1
        elif self.dropped_ids:
            vertex_id = self.dropped_ids.pop_random(rng)
            self.stats["recreate_vertex"] += 1
        else:
            return self.set_vertex_property()
        labels = rng.sample(self.labels, rng.choice((1, 1, 2, 2, 3)))
        vertex = _GenVertex(labels, {}, {})
        self.vertices[vertex_id] = vertex
        self.live.add(vertex_id)
        for label in labels:
            self._label_op("ADD", vertex_id, label)
        for key in rng.sample(self.keys, rng.choice((0, 1, 2, 2, 3, 3, 4, 5))):
            self._set_prop("vp", vertex_id, vertex.props, key)
        return None

    def drop_vertex(self) -> None:
        rng = self.rng
        # Best of three: prefer the vertex with the most edges (and properties), so drops usually detach.
        candidates = [self.live.choice(rng) for _ in range(3)]
        vertex_id = max(candidates, key=lambda v: (len(self.vertices[v].edges), len(self.vertices[v].props)))
        vertex = self.vertices[vertex_id]
        self.stats["drop_vertex"] += 1
        if vertex.edges:
            self.stats["drop_vertex_with_edges"] += 1
        self.stats["drop_detached_edges"] += len(vertex.edges)
        for edge_id in list(vertex.edges):
            self._remove_edge(edge_id)
        for key, value_obj in vertex.props.items():
            self._prop_op("REMOVE", "vp", vertex_id, key, value_obj)
        for label in vertex.labels:
            self._label_op("REMOVE", vertex_id, label)
        del self.vertices[vertex_id]
        self.live.remove(vertex_id)
        self.dropped_ids.add(vertex_id)

    def set_vertex_property(self) -> None:
        vertex_id = self.live.choice(self.rng)
        vertex = self.vertices[vertex_id]
        if vertex.props and self.rng.random() < 0.6:
            key = self.rng.choice(list(vertex.props))
            self.stats["update_vertex_property"] += 1
        else:
            key = self.rng.choice(self.keys)
            self.stats["update_vertex_property" if key in vertex.props else "add_vertex_property"] += 1
        self._set_prop("vp", vertex_id, vertex.props, key)

    def remove_vertex_property(self) -> None:
        vertex_id = self.live.choice(self.rng)
        vertex = self.vertices[vertex_id]
        if not vertex.props:
            return self.set_vertex_property()
        key = self.rng.choice(list(vertex.props))
        self.stats["remove_vertex_property"] += 1
        self._prop_op("REMOVE", "vp", vertex_id, key, vertex.props.pop(key))
        return None

    def add_label(self) -> None:
        vertex_id = self.live.choice(self.rng)
        vertex = self.vertices[vertex_id]
        label = self.rng.choice(self.labels)
        if label in vertex.labels:
            return self.set_vertex_property()
        vertex.labels.append(label)
        self.stats["add_label"] += 1
        self._label_op("ADD", vertex_id, label)
        return None

    def remove_label(self) -> None:
        vertex_id = self.live.choice(self.rng)
        vertex = self.vertices[vertex_id]
        if len(vertex.labels) < 2:
            return self.add_label()
        label = vertex.labels.pop(self.rng.randrange(len(vertex.labels)))
        self.stats["remove_label"] += 1
        self._label_op("REMOVE", vertex_id, label)
        return None

    def add_edge(self) -> None:
        rng = self.rng
        from_id = self.live.choice(rng)
        to_id = from_id if rng.random() < 0.03 else self.live.choice(rng)
        if self.dropped_edge_ids and rng.random() < 0.3:
            edge_id = self.dropped_edge_ids.pop_random(rng)
            self.stats["readd_edge_id"] += 1
        else:
            edge_id = _edge_id(self.next_edge, self.weird)
            self.next_edge += 1
        self.stats["add_edge"] += 1
        edge = _GenEdge(rng.choice(self.types), from_id, to_id, {})
        self.edges[edge_id] = edge
        self.live_edges.add(edge_id)
        self.vertices[from_id].edges[edge_id] = None
        self.vertices[to_id].edges[edge_id] = None
        self._edge_op("ADD", edge_id, edge)
        for key in rng.sample(self.keys, rng.choice((0, 0, 1, 1, 2, 3))):
            self._set_prop("ep", edge_id, edge.props, key)

    def set_edge_property(self) -> None:
        edge_id = self.live_edges.choice(self.rng)
        edge = self.edges[edge_id]
        if edge.props and self.rng.random() < 0.6:
            key = self.rng.choice(list(edge.props))
        else:
            key = self.rng.choice(self.keys)
        self.stats["update_edge_property" if key in edge.props else "add_edge_property"] += 1
        self._set_prop("ep", edge_id, edge.props, key)

    def remove_edge_property(self) -> None:
        edge_id = self.live_edges.choice(self.rng)
        edge = self.edges[edge_id]
        if not edge.props:
            return self.set_edge_property()
        key = self.rng.choice(list(edge.props))
        self.stats["remove_edge_property"] += 1
        self._prop_op("REMOVE", "ep", edge_id, key, edge.props.pop(key))
        return None

    def remove_edge(self) -> None:
        self.stats["remove_edge"] += 1
        self._remove_edge(self.live_edges.choice(self.rng))

    def _remove_edge(self, edge_id: str) -> None:
        edge = self.edges.pop(edge_id)
        for key, value_obj in edge.props.items():
            self._prop_op("REMOVE", "ep", edge_id, key, value_obj)
        self._edge_op("REMOVE", edge_id, edge)
        self.vertices[edge.from_id].edges.pop(edge_id, None)
        self.vertices[edge.to_id].edges.pop(edge_id, None)
        self.live_edges.remove(edge_id)
        self.dropped_edge_ids.add(edge_id)

    # -- choosing ----------------------------------------------------------------------------------

    def step(self) -> None:
        """One logical operation, weighted so that the graph grows first and then churns."""
        n_live = len(self.live)
        if n_live == 0:
            return self.create_vertex()
        fill = n_live / self.n_vertex_ids
        n_edges = len(self.live_edges)
        edge_room = max(0.2, 1.0 - n_edges / (3.0 * n_live))
        can_create = bool(self.fresh_ids or self.dropped_ids)
        weights = (
            (self.create_vertex, (40.0 * (1.0 - fill) + 3.0) if can_create else 0.0),
            (self.drop_vertex, 14.0 * fill),
            (self.set_vertex_property, 22.0),
            (self.remove_vertex_property, 5.0),
            (self.add_label, 5.0),
            (self.remove_label, 4.0),
            (self.add_edge, 50.0 * edge_room),
            (self.set_edge_property, 10.0 if n_edges else 0.0),
            (self.remove_edge_property, 3.0 if n_edges else 0.0),
            (self.remove_edge, 5.0 if n_edges else 0.0),
        )
        roll = self.rng.random() * sum(w for _, w in weights)
        for action, weight in weights:
            roll -= weight
            if roll < 0:
                return action()
        return weights[2][0]()

    def commit(self) -> list[dict[str, Any]]:
        """One commit of 1-3 logical operations."""
        self.ops = []
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3))):
            self.step()
        self.stats["commits"] += 1
        return self.ops


def generate_history(
    seed: int,
    n_changes: int,
    *,
    n_vertex_ids: int | None = None,
    weird_names: bool = True,
    start_commit_ms: int = 1_700_000_000_000,
) -> History:
    """Generate a change log of at least `n_changes` ops (whole commits) and the graph it builds.

    `n_vertex_ids` is the size of the vertex id universe (default: ``max(20, n_changes // 20)``, which gives
    a live graph of roughly 0.8 x that many vertices once it has grown, and keeps drops and re-creates
    frequent).
    With ``weird_names=False`` labels, types, keys and ids are plain identifiers.
    """
    if n_changes < 1:
        raise ValueError("n_changes must be at least 1")
    ids = n_vertex_ids if n_vertex_ids is not None else max(20, n_changes // 20)
    if ids < 2:
        raise ValueError("n_vertex_ids must be at least 2")
    gen = _Generator(seed, ids, weird_names)
    with without_gc():
        return _run(gen, seed, n_changes, start_commit_ms)


def _run(gen: _Generator, seed: int, n_changes: int, start_commit_ms: int) -> History:
    commits: list[list[dict[str, Any]]] = []
    stamps: list[int] = []
    stamp = start_commit_ms
    total = 0
    while total < n_changes:
        ops = gen.commit()
        if not ops:
            continue
        commits.append(ops)
        stamps.append(stamp)
        stamp += gen.rng.randrange(0, 40)
        total += len(ops)
    return History(seed, commits, stamps, gen.reference, gen.stats)
