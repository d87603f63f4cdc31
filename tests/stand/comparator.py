"""Read a replicated graph back from a target and diff it against the reference model.

`read_falkordb_graph` turns a FalkorDB graph written by the daemon (names encoded by
`daemon.names.encode_falkordb_name`, the source id in the id property, every vertex carrying the base label)
into a `ReferenceGraph`; structural problems that a `ReferenceGraph` cannot express (a node without an id, two
nodes with one id, a node with only hidden labels, a node without the base label, an edge whose endpoint has
no id) go to its `problems` list. `diff_graphs` lists differences in words; `assert_converged` fails a test
with them.

Value comparison rule (`same_value`):

* types must match: ``1`` (an integer type) and ``1.0`` (a Float/Double) differ, and ``True`` differs from
  ``1``; PG_JSON keeps integer and floating types apart and a target that turns one into the other has lost
  information (64-bit integers do not survive a trip through a double);
* NaN equals NaN, and ``0.0`` equals ``-0.0`` (they compare equal in Python and in Cypher);
* floats are compared to `float_digits` significant digits (15 by default), because FalkorDB formats doubles
  in query replies with ``%.15g``: the stored double is exact, but a client sees only 15 digits of it (and
  reads +-DBL_MAX back as +-inf, since ``1.79769313486232e+308`` overflows). Pass ``float_digits=None`` for
  exact comparison with targets that return doubles exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from daemon.names import decode_falkordb_name
from tests.stand.workload import Edge, ReferenceGraph, Vertex, without_gc

if TYPE_CHECKING:
    from falkordb import Graph

__all__ = ["assert_converged", "diff_graphs", "read_falkordb_graph", "same_value"]

PAGE_SIZE = 10_000  # internal ids per page; pages are id ranges, so the cost of a page does not grow with it
FALKORDB_FLOAT_DIGITS = 15


# ----------------------------------------------------------------------------------------------------
# Reading FalkorDB
# ----------------------------------------------------------------------------------------------------


def _decode_props(stored: dict[str, Any]) -> dict[str, Any]:
    return {decode_falkordb_name(key): value for key, value in stored.items()}


def read_falkordb_graph(
    graph: Graph,
    *,
    id_property: str = "~id",
    hidden_labels: frozenset[str] = frozenset({"Replicated"}),
    base_label: str | None = "Replicated",
    page_size: int = PAGE_SIZE,
    allow_unlabelled: bool = False,
) -> ReferenceGraph:
    """Read every node and relationship of a FalkorDB graph (a sync `falkordb` Graph handle).

    Labels, types and property keys are decoded with `decode_falkordb_name`; `hidden_labels` are dropped; the
    id comes from `id_property` (a decoded key) and is not kept as a property. When `base_label` is set,
    nodes that lack it are reported (the sink finds vertices through that label and its id index, so such a
    node is invisible to it). Pages are ranges of internal ids (FalkorDB seeks them with NodeByIdSeek);
    relationships are read with their source node's page. A graph that does not exist reads as empty.
    `allow_unlabelled` accepts nodes with no visible label (the bare endpoints a DynamoDB edge item creates).

    Cost: the redis client's pure-Python reply parser dominates (about 5 s for 70,000 elements here).
    """
    reader = _FalkorDBReader(graph, id_property, hidden_labels, base_label, allow_unlabelled)
    with without_gc():
        return reader.read(page_size)


class _FalkorDBReader:
    """One read of a FalkorDB graph into a (lenient) `ReferenceGraph`."""

    def __init__(
        self,
        graph: Graph,
        id_property: str,
        hidden_labels: frozenset[str],
        base_label: str | None,
        allow_unlabelled: bool = False,
    ) -> None:
        self.graph = graph
        self.allow_unlabelled = allow_unlabelled
        self.id_property = id_property
        self.hidden_labels = hidden_labels
        self.base_label = base_label
        self.result = ReferenceGraph(strict=False)
        self.node_ids: dict[int, str] = {}  # internal id -> source id, for nodes that have one

    def read(self, page_size: int) -> ReferenceGraph:
        try:
            rows = self.graph.ro_query("MATCH (n) RETURN max(id(n))").result_set
        except ResponseError as exc:
            if "empty key" in str(exc):  # the graph was never written: it is empty
                return self.result
            raise
        max_id = rows[0][0] if rows and rows[0][0] is not None else -1
        pages = [{"lo": lo, "hi": lo + page_size} for lo in range(0, max_id + 1, page_size)]
        for params in pages:
            query = "MATCH (n) WHERE id(n) >= $lo AND id(n) < $hi RETURN id(n), labels(n), properties(n)"
            for internal, labels, props in self.graph.ro_query(query, params).result_set:
                self._node(internal, labels, props)
        for params in pages:
            query = (
                "MATCH (a)-[r]->(b) WHERE id(a) >= $lo AND id(a) < $hi "
                "RETURN id(r), type(r), properties(r), id(a), id(b)"
            )
            for internal, type_, props, from_internal, to_internal in self.graph.ro_query(query, params).result_set:
                self._relationship(internal, type_, props, from_internal, to_internal)
        return self.result

    def _node(self, internal: int, stored_labels: list[str], stored_props: dict[str, Any]) -> None:
        problems = self.result.problems
        labels = [decode_falkordb_name(label) for label in stored_labels]
        props = _decode_props(stored_props)
        vertex_id = props.pop(self.id_property, None)
        if not isinstance(vertex_id, str):
            problems.append(f"node #{internal} {labels!r} has no string {self.id_property!r} ({vertex_id!r})")
            return
        where = f"node #{internal} id {vertex_id!r}"
        if self.base_label is not None and self.base_label not in labels:
            problems.append(f"{where} lacks the base label {self.base_label!r} (labels {labels!r})")
        self.node_ids[internal] = vertex_id  # its relationships are read even when the node itself is wrong
        visible = frozenset(labels) - self.hidden_labels
        if not visible and not self.allow_unlabelled:
            problems.append(f"{where} has no labels besides hidden ones {labels!r} (props {props!r})")
        elif vertex_id in self.result.vertices:
            problems.append(f"{where}: another node has the same id")
        else:
            self.result.add_vertex(vertex_id, visible, props)

    def _relationship(
        self,
        internal: int,
        stored_type: str,
        stored_props: dict[str, Any],
        from_internal: int,
        to_internal: int,
    ) -> None:
        props = _decode_props(stored_props)
        edge_id = props.pop(self.id_property, None)
        type_ = decode_falkordb_name(stored_type)
        where = f"relationship #{internal} :{type_!r}"
        if not isinstance(edge_id, str):
            self.result.problems.append(f"{where} has no string {self.id_property!r} ({edge_id!r})")
            return
        from_id, to_id = self.node_ids.get(from_internal), self.node_ids.get(to_internal)
        if from_id is None or to_id is None:
            self.result.problems.append(f"{where} id {edge_id!r} has an endpoint without an id")
            return
        self.result.add_edge(edge_id, type_, from_id, to_id, props)


# ----------------------------------------------------------------------------------------------------
# Comparing
# ----------------------------------------------------------------------------------------------------


def same_value(a: Any, b: Any, float_digits: int | None = FALKORDB_FLOAT_DIGITS) -> bool:
    """Property value equality by the rule in the module doc."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if a == b or float_digits is None:
            return a == b
        # Round both sides the way the target's reply did; float() maps a rounded DBL_MAX to inf, as the
        # client does with the target's reply, so the largest doubles compare equal to their read-back.
        return float(f"{a:.{float_digits}g}") == float(f"{b:.{float_digits}g}")
    return bool(a == b)


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _diff_props(what: str, expected: dict[str, Any], actual: dict[str, Any], digits: int | None) -> Iterator[str]:
    for key in sorted(expected.keys() | actual.keys()):
        if key not in actual:
            yield f"{what}: property {key!r} missing (expected {_show(expected[key])})"
        elif key not in expected:
            yield f"{what}: unexpected property {key!r} = {_show(actual[key])}"
        elif not same_value(expected[key], actual[key], digits):
            yield (f"{what}: property {key!r} differs: expected {_show(expected[key])}, actual {_show(actual[key])}")


def _diff_vertex(vertex_id: str, expected: Vertex, actual: Vertex, digits: int | None) -> Iterator[str]:
    what = f"vertex {vertex_id!r}"
    if expected.labels != actual.labels:
        missing = sorted(expected.labels - actual.labels)
        extra = sorted(actual.labels - expected.labels)
        yield (
            f"{what}: labels differ: expected {sorted(expected.labels)!r}, actual {sorted(actual.labels)!r} "
            f"(missing {missing!r}, extra {extra!r})"
        )
    yield from _diff_props(what, expected.props, actual.props, digits)


def _diff_edge(edge_id: str, expected: Edge, actual: Edge, digits: int | None) -> Iterator[str]:
    what = f"edge {edge_id!r}"
    if expected.type != actual.type:
        yield f"{what}: type differs: expected {expected.type!r}, actual {actual.type!r}"
    if (expected.from_id, expected.to_id) != (actual.from_id, actual.to_id):
        yield (
            f"{what}: endpoints differ: expected {expected.from_id!r}->{expected.to_id!r}, "
            f"actual {actual.from_id!r}->{actual.to_id!r}"
        )
    yield from _diff_props(what, expected.props, actual.props, digits)


def _describe_vertex(vertex: Vertex) -> str:
    return f"labels {sorted(vertex.labels)!r}, {len(vertex.props)} properties"


def _describe_edge(edge: Edge) -> str:
    return f"{edge.type!r} {edge.from_id!r}->{edge.to_id!r}, {len(edge.props)} properties"


def iter_differences(
    expected: ReferenceGraph, actual: ReferenceGraph, float_digits: int | None = FALKORDB_FLOAT_DIGITS
) -> Iterator[str]:
    """Every difference, structural problems first, then vertices and edges in id order."""
    for problem in expected.problems:
        yield f"expected graph: {problem}"
    for problem in actual.problems:
        yield f"target: {problem}"
    for vertex_id in sorted(expected.vertices.keys() | actual.vertices.keys()):
        want, got = expected.vertices.get(vertex_id), actual.vertices.get(vertex_id)
        if got is None:
            assert want is not None
            yield f"missing vertex {vertex_id!r} ({_describe_vertex(want)})"
        elif want is None:
            yield f"extra vertex {vertex_id!r} ({_describe_vertex(got)})"
        else:
            yield from _diff_vertex(vertex_id, want, got, float_digits)
    for edge_id in sorted(expected.edges.keys() | actual.edges.keys()):
        want_edge, got_edge = expected.edges.get(edge_id), actual.edges.get(edge_id)
        if got_edge is None:
            assert want_edge is not None
            yield f"missing edge {edge_id!r} ({_describe_edge(want_edge)})"
        elif want_edge is None:
            yield f"extra edge {edge_id!r} ({_describe_edge(got_edge)})"
        else:
            yield from _diff_edge(edge_id, want_edge, got_edge, float_digits)


def diff_graphs(
    expected: ReferenceGraph,
    actual: ReferenceGraph,
    limit: int = 20,
    *,
    float_digits: int | None = FALKORDB_FLOAT_DIGITS,
) -> list[str]:
    """Up to `limit` human-readable differences; empty when the graphs are equal.

    When there are more, a last line says how many were left out (so the list then has ``limit + 1`` lines).
    """
    out: list[str] = []
    more = 0
    for line in iter_differences(expected, actual, float_digits):
        if len(out) < limit:
            out.append(line)
        else:
            more += 1
    if more:
        out.append(f"... and {more} more difference(s)")
    return out


def assert_converged(
    expected: ReferenceGraph,
    actual: ReferenceGraph,
    *,
    limit: int = 20,
    float_digits: int | None = FALKORDB_FLOAT_DIGITS,
) -> None:
    """Raise AssertionError with the first differences and the sizes of both graphs, unless they are equal."""
    differences = diff_graphs(expected, actual, limit, float_digits=float_digits)
    if differences:
        raise AssertionError(
            f"target has not converged: expected {len(expected.vertices)} vertices / "
            f"{len(expected.edges)} edges, target has {len(actual.vertices)} vertices / "
            f"{len(actual.edges)} edges; differences:\n  " + "\n  ".join(differences)
        )
