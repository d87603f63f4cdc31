"""The convergence-test tools: reference model semantics, the generator's invariants, the comparator.

The FalkorDB round trip writes a reference graph with plain CREATE statements by the sink's encoding rule
(names through `quote_falkordb`, values as parameters, base label `Replicated`, id in `~id`) and reads it
back.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from falkordb import FalkorDB, Graph

from daemon.engine import start_engine_in_thread
from daemon.names import quote_falkordb
from daemon.values import INT64_MAX, INT64_MIN
from tests.stand.comparator import assert_converged, diff_graphs, read_falkordb_graph, same_value
from tests.stand.workload import (
    DATA_TYPES,
    History,
    InconsistentOp,
    ReferenceGraph,
    generate_history,
)

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def vl(op: str, vid: str, label: str) -> dict[str, Any]:
    value = {"value": label, "dataType": "String"}
    return {"op": op, "data": {"id": vid, "type": "vl", "key": "label", "value": value}}


def vp(op: str, vid: str, key: str, raw: Any, data_type: str = "String") -> dict[str, Any]:
    value = {"value": raw, "dataType": data_type}
    return {"op": op, "data": {"id": vid, "type": "vp", "key": key, "value": value}}


def ep(op: str, eid: str, key: str, raw: Any, data_type: str = "String") -> dict[str, Any]:
    value = {"value": raw, "dataType": data_type}
    return {"op": op, "data": {"id": eid, "type": "ep", "key": key, "value": value}}


def e(op: str, eid: str, type_: str, src: str, dst: str) -> dict[str, Any]:
    value = {"value": type_, "dataType": "String"}
    data = {"id": eid, "type": "e", "key": "label", "value": value, "from": src, "to": dst}
    return {"op": op, "data": data}


def two_vertices_and_edge() -> list[dict[str, Any]]:
    return [
        vl("ADD", "a", "Person"),
        vl("ADD", "a", "it's"),
        vp("ADD", "a", "name", "Ann"),
        vl("ADD", "b", "City"),
        vp("ADD", "b", "pop", 5, "Int"),
        e("ADD", "e1", "LIVES_IN", "a", "b"),
        ep("ADD", "e1", "since", 1_700_000_000_000, "Date"),
    ]


# ----------------------------------------------------------------------------------------------------------
# Reference model
# ----------------------------------------------------------------------------------------------------------


def test_set_then_update_and_remove() -> None:
    graph = ReferenceGraph().apply_all(
        [
            vl("ADD", "v", "L"),
            vp("ADD", "v", "age", 1, "Int"),
            vp("REMOVE", "v", "age", 1, "Int"),
            vp("ADD", "v", "age", "one"),
            vp("ADD", "v", "gone", 1.5, "Double"),
            vp("REMOVE", "v", "gone", 1.5, "Double"),
        ]
    )
    assert graph.vertices["v"].props == {"age": "one"}
    assert graph.vertices["v"].labels == frozenset({"L"})


def test_values_are_stored_as_from_pg_json_converts_them() -> None:
    graph = ReferenceGraph().apply_all(
        [
            vl("ADD", "v", "L"),
            vp("ADD", "v", "d", 0, "Date"),
            vp("ADD", "v", "n", "NaN", "Double"),
            vp("ADD", "v", "lo", INT64_MIN, "Long"),
            vp("ADD", "v", "f", 2, "Float"),
            vp("ADD", "v", "b", True, "Bool"),
        ]
    )
    props = graph.vertices["v"].props
    assert props == {"d": "1970-01-01T00:00:00.000Z", "n": "NaN", "lo": INT64_MIN, "f": 2.0, "b": True}
    assert type(props["f"]) is float


def test_drop_with_edges_then_recreate() -> None:
    graph = ReferenceGraph().apply_all(two_vertices_and_edge())
    assert graph.edges["e1"].props == {"since": "2023-11-14T22:13:20.000Z"}
    graph.apply_all(
        [
            ep("REMOVE", "e1", "since", 1_700_000_000_000, "Date"),
            e("REMOVE", "e1", "LIVES_IN", "a", "b"),
            vp("REMOVE", "b", "pop", 5, "Int"),
            vl("REMOVE", "b", "City"),
        ]
    )
    assert set(graph.vertices) == {"a"} and not graph.edges
    assert graph.incident_edges("a") == []
    graph.apply_all([vl("ADD", "b", "Town"), e("ADD", "e1", "NEAR", "b", "a")])
    assert graph.vertices["b"].labels == frozenset({"Town"}) and graph.vertices["b"].props == {}
    assert (graph.edges["e1"].type, graph.edges["e1"].from_id, graph.edges["e1"].to_id) == ("NEAR", "b", "a")
    assert graph.edges["e1"].props == {}


@pytest.mark.parametrize(
    "bad",
    [
        e("ADD", "e2", "T", "a", "nobody"),  # endpoint missing
        vl("REMOVE", "b", "City"),  # last label while properties and an edge remain
        vp("ADD", "a", "name", "Bob"),  # set without removing the old value
        vp("REMOVE", "a", "name", "Bob"),  # remove with another value
        vl("ADD", "a", "Person"),  # label already there
        e("REMOVE", "e1", "LIVES_IN", "a", "b"),  # edge removed with properties left
        ep("ADD", "nope", "k", 1, "Int"),  # property of a missing edge
    ],
)
def test_strict_model_rejects_what_neptune_cannot_log(bad: dict[str, Any]) -> None:
    graph = ReferenceGraph().apply_all(two_vertices_and_edge())
    with pytest.raises(InconsistentOp):
        graph.apply(bad)


def test_lenient_model_detaches_a_vertex_that_loses_its_last_label() -> None:
    graph = ReferenceGraph(strict=False).apply_all(two_vertices_and_edge())
    graph.apply_all([vl("REMOVE", "b", "City"), vp("ADD", "a", "name", "Bob"), vp("REMOVE", "x", "k", "")])
    assert set(graph.vertices) == {"a"} and not graph.edges
    assert graph.vertices["a"].props == {"name": "Bob"}


# ----------------------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------------------


def _digest(history: History) -> str:
    return hashlib.sha256(json.dumps(list(history.records()), sort_keys=True).encode()).hexdigest()


def test_same_seed_same_history_in_any_process() -> None:
    first, again = generate_history(7, 3000), generate_history(7, 3000)
    assert first.commits == again.commits and first.commit_ms == again.commit_ms
    assert diff_graphs(first.reference, again.reference, float_digits=None) == []
    assert generate_history(8, 3000).commits != first.commits
    script = (
        "import hashlib, json\n"
        "from tests.stand.workload import generate_history\n"
        "h = generate_history(7, 3000)\n"
        "print(hashlib.sha256(json.dumps(list(h.records()), sort_keys=True).encode()).hexdigest())\n"
    )
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == _digest(first), f"history differs with PYTHONHASHSEED={hash_seed}"


def _check_records(history: History) -> None:
    records = list(history.records())
    assert len(records) == history.n_records
    previous_stamp = 0
    for commit_num, ops in enumerate(history.commits, start=1):
        assert ops, "empty commit"
        chunk, records = records[: len(ops)], records[len(ops) :]
        assert [r["eventId"] for r in chunk] == [{"commitNum": commit_num, "opNum": n} for n in range(1, len(ops) + 1)]
        assert [r.get("isLastOp") for r in chunk] == [None] * (len(ops) - 1) + [True]
        assert len({r["commitTimestamp"] for r in chunk}) == 1
        assert chunk[0]["commitTimestamp"] >= previous_stamp
        previous_stamp = chunk[0]["commitTimestamp"]
    json.dumps(list(history.records()), allow_nan=False)  # valid JSON throughout


def _check_shape(op: dict[str, Any]) -> None:
    data = op["data"]
    assert op["op"] in ("ADD", "REMOVE")
    assert isinstance(data["id"], str) and data["id"]
    assert data["value"]["dataType"] in DATA_TYPES
    if data["type"] in ("vl", "e"):
        assert data["key"] == "label" and data["value"]["dataType"] == "String"
        assert data["value"]["value"] and data["value"]["value"] not in ("Replicated", "__Vertex")
    else:
        assert data["key"] and data["key"] != "~id"
    assert ("from" in data) == ("to" in data) == (data["type"] == "e")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_history_keeps_its_own_invariants(seed: int) -> None:
    history = generate_history(seed, 20_000)
    assert 20_000 <= history.n_records < 20_000 + 200
    _check_records(history)
    replay = ReferenceGraph()  # strict: REMOVEs carry the current value, no stray ADDs, endpoints exist
    for ops in history.commits:
        # A run of consecutive `vl` REMOVEs of one vertex: its starting labels, its length, the op before it.
        run_labels: frozenset[str] = frozenset()
        run_length = 0
        before_run: dict[str, Any] | None = None
        previous: dict[str, Any] | None = None
        for op in ops:
            _check_shape(op)
            data = op["data"]
            if data["type"] == "e" and op["op"] == "ADD":
                assert data["from"] in replay.vertices and data["to"] in replay.vertices
            if data["type"] == "vl" and op["op"] == "REMOVE":
                vid = data["id"]
                if previous is None or previous["data"]["type"] != "vl" or previous["data"]["id"] != vid:
                    run_labels, run_length, before_run = replay.vertices[vid].labels, 0, previous
                run_length += 1
                replay.apply(op)
                if vid not in replay.vertices:
                    # The vertex lost its last label: only a drop does that, removing every label in one run
                    # after the REMOVEs of its edges and properties (the strict model checks none are left).
                    assert run_length == len(run_labels)
                    assert before_run is None or before_run["op"] == "REMOVE"
            else:
                replay.apply(op)
            previous = op
    assert diff_graphs(history.reference, replay, float_digits=None) == []

    stats = history.stats
    for name in ("recreate_vertex", "drop_vertex_with_edges", "readd_edge_id", "remove_label", "add_label"):
        assert stats[name] > 50, (name, stats)
    assert stats["drop_vertex_with_edges"] > stats["drop_vertex"] / 2
    types = Counter(op["data"]["value"]["dataType"] for op in history.ops() if op["data"]["type"] == "vp")
    assert set(types) == set(DATA_TYPES)
    names = {op["data"]["value"]["value"] for op in history.ops() if op["data"]["type"] in ("vl", "e")}
    assert {"back`tick", "100% Pure", "日本", "MATCH", "null"} <= names


def test_plain_names() -> None:
    history = generate_history(5, 2000, weird_names=False)
    names = {op["data"]["id"] for op in history.ops()} | {op["data"]["key"] for op in history.ops()}
    names |= {op["data"]["value"]["value"] for op in history.ops() if op["data"]["type"] in ("vl", "e")}
    assert all(name.replace("_", "").isalnum() and name.isascii() for name in names)


# ----------------------------------------------------------------------------------------------------------
# Comparator, without a target
# ----------------------------------------------------------------------------------------------------------


def test_value_comparison_rule() -> None:
    assert not same_value(1, 1.0) and not same_value(True, 1) and not same_value("1", 1)
    assert same_value(math.nan, math.nan) and same_value(0.0, -0.0)
    assert same_value(1 / 3, 0.333333333333333)  # FalkorDB replies with 15 significant digits
    assert not same_value(1 / 3, 0.333333333333333, float_digits=None)
    assert not same_value(1 / 3, 0.33333333333333)
    assert same_value(1.7976931348623157e308, math.inf)  # DBL_MAX read back through "%.15g"
    assert not same_value(math.inf, -math.inf)


def test_diff_names_each_kind_of_difference() -> None:
    expected = ReferenceGraph().apply_all(two_vertices_and_edge())
    actual = ReferenceGraph().apply_all(two_vertices_and_edge())
    assert diff_graphs(expected, actual) == []
    actual.vertices["a"].labels = frozenset({"Person"})
    actual.vertices["b"].props["pop"] = 5.0
    actual.edges["e1"].to_id = "a"
    actual.add_vertex("z", ["Extra"])
    actual.problems.append("node #9 has no string '~id'")
    lines = diff_graphs(expected, actual)
    assert lines[0] == "target: node #9 has no string '~id'"
    text = "\n".join(lines)
    assert "vertex 'a': labels differ" in text and 'missing ["it\'s"]' in text
    assert "vertex 'b': property 'pop' differs: expected 5 (int), actual 5.0 (float)" in text
    assert "edge 'e1': endpoints differ: expected 'a'->'b', actual 'a'->'a'" in text
    assert "extra vertex 'z'" in text
    assert len(diff_graphs(expected, actual, limit=2)) == 3
    assert diff_graphs(expected, actual, limit=2)[-1] == "... and 3 more difference(s)"
    counts = r"expected 2 vertices / 1 edges, target has 3 vertices / 1 edges"
    with pytest.raises(AssertionError, match=counts):
        assert_converged(expected, actual)


# ----------------------------------------------------------------------------------------------------------
# Round trip through FalkorDB
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def falkordb_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FalkorDB]:
    engine, stop = start_engine_in_thread(tmp_path_factory.mktemp("falkordb"), fsync="no")
    try:
        yield FalkorDB(host=engine.host, port=engine.port, password=engine.password)
    finally:
        stop()


def _props_clause(props: dict[str, Any], params: dict[str, Any], id_value: str) -> str:
    params["id"] = id_value
    parts = ["`~id`: $id"]
    for n, (key, value) in enumerate(props.items()):
        params[f"p{n}"] = value
        parts.append(f"{quote_falkordb(key)}: $p{n}")
    return "{" + ", ".join(parts) + "}"


def write_reference(graph: Graph, reference: ReferenceGraph) -> None:
    """Plain CREATE statements by the sink's encoding rule (one per element)."""
    graph.query("CREATE INDEX FOR (n:Replicated) ON (n.`~id`)")
    for vid, vertex in reference.vertices.items():
        params: dict[str, Any] = {}
        labels = "".join(":" + quote_falkordb(label) for label in sorted(vertex.labels))
        graph.query(f"CREATE (:Replicated{labels} {_props_clause(vertex.props, params, vid)})", params)
    for eid, edge in reference.edges.items():
        params = {"a": edge.from_id, "b": edge.to_id}
        props = _props_clause(edge.props, params, eid)
        graph.query(
            "MATCH (a:Replicated {`~id`: $a}), (b:Replicated {`~id`: $b}) "
            f"CREATE (a)-[:{quote_falkordb(edge.type)} {props}]->(b)",
            params,
        )


def test_round_trip_through_falkordb(falkordb_client: FalkorDB) -> None:
    reference = generate_history(3, 1500).reference
    reference.apply_all(
        [
            vl("ADD", "edge cases", "`RETURN`"),
            vp("ADD", "edge cases", "dbl max", 1.7976931348623157e308, "Double"),
            vp("ADD", "edge cases", "third", 1 / 3, "Double"),
            vp("ADD", "edge cases", "int64 min", INT64_MIN, "Long"),
            vp("ADD", "edge cases", "int64 max", INT64_MAX, "Long"),
            vp("ADD", "edge cases", "nan", "NaN", "Double"),
            vp("ADD", "edge cases", "%60", "", "String"),
            vp("ADD", "edge cases", "it's `odd`", "line\n'quote' \"dq\" `bt` 😀", "String"),
        ]
    )
    assert len(reference.vertices) > 50 and len(reference.edges) > 30
    graph = falkordb_client.select_graph("round_trip")
    write_reference(graph, reference)

    actual = read_falkordb_graph(graph, page_size=16)  # many pages
    assert_converged(reference, actual)
    assert actual.vertices["edge cases"].props["it's `odd`"] == "line\n'quote' \"dq\" `bt` 😀"
    assert read_falkordb_graph(falkordb_client.select_graph("never written")).vertices == {}

    # One changed property is named with both values.
    vid, key = next((v, next(iter(x.props))) for v, x in sorted(reference.vertices.items()) if x.props)
    set_one = f"MATCH (n:Replicated {{`~id`: $id}}) SET n.{quote_falkordb(key)} = $v"
    graph.query(set_one, {"id": vid, "v": "X"})
    lines = diff_graphs(reference, read_falkordb_graph(graph))
    assert len(lines) == 1 and lines[0].startswith(f"vertex {vid!r}: property {key!r} differs: expected ")
    assert lines[0].endswith("actual 'X' (str)")

    # Structural problems: a duplicate id, a node with only the base label, a node without the base label.
    graph.query("CREATE (:Replicated:Person {`~id`: $id})", {"id": vid})
    graph.query("CREATE (:Replicated {`~id`: 'hidden only'})")
    graph.query("CREATE (:Person {`~id`: 'no base'})")
    graph.query("CREATE (:Replicated:A {`~id`: 'src'})-[:T]->(:Replicated:B)")
    text = "\n".join(diff_graphs(reference, read_falkordb_graph(graph), limit=100))
    assert "['Replicated', 'B'] has no string '~id' (None)" in text
    assert ":'T' has no string '~id' (None)" in text
    assert f"id {vid!r}: another node has the same id" in text
    assert "id 'hidden only' has no labels besides hidden ones" in text
    assert "id 'no base' lacks the base label 'Replicated'" in text
    assert "extra vertex 'no base'" in text
