"""Coalescing and layering (daemon.scheduler): what may run together, what must wait, what merges."""

from __future__ import annotations

from typing import Any

from daemon.cypher import falkordb_dialect, neptune_dialect
from daemon.model import EDGE, EDGE_PROPERTY, VERTEX_LABEL, VERTEX_PROPERTY, GraphChange
from daemon.scheduler import EdgeTypeCache, Planner

_seq = iter(range(1, 10**9))


def vl(vid: str, label: str, add: bool = True) -> GraphChange:
    return GraphChange(VERTEX_LABEL, add, vid, label, position=(next(_seq), 1))


def vp(vid: str, key: str, value: Any, add: bool = True) -> GraphChange:
    return GraphChange(VERTEX_PROPERTY, add, vid, key, value, position=(next(_seq), 1))


def e(eid: str, etype: str, src: str, dst: str, add: bool = True) -> GraphChange:
    return GraphChange(EDGE, add, eid, etype, None, src, dst, position=(next(_seq), 1))


def ep(eid: str, key: str, value: Any, add: bool = True) -> GraphChange:
    return GraphChange(EDGE_PROPERTY, add, eid, key, value, position=(next(_seq), 1))


async def no_lookup(ids: list[str]) -> dict[str, str]:
    raise AssertionError(f"unexpected lookup of {ids}")


def planner(dialect=None, lookup=no_lookup) -> Planner:
    return Planner(dialect or falkordb_dialect(), lookup, 100)


def layer_of(plan, element_id: str) -> list[int]:
    return [i for i, layer in enumerate(plan.layers) for b in layer for r in b.rows if r["id"] == element_id]


async def test_vertex_creation_coalesces_into_one_row() -> None:
    plan = await planner().plan([vl("a", "Person"), vl("a", "Admin"), vp("a", "name", "x"), vp("a", "age", 3)])
    assert plan.n_changes == 4 and plan.n_mutations == 1
    (batch,) = plan.layers[0]
    assert batch.rows == [{"id": "a", "props": {"name": "x", "age": 3}}]
    assert "SET n:`Person`:`Admin`, n += r.props" in batch.statements[0]


async def test_edges_wait_for_their_endpoints_and_share_a_layer() -> None:
    changes = [vl("a", "P"), vl("b", "P"), vl("c", "P"), e("e1", "R", "a", "b"), e("e2", "R", "a", "c")]
    plan = await planner().plan(changes)
    assert layer_of(plan, "a") == [0] and layer_of(plan, "b") == [0]
    assert layer_of(plan, "e1") == [1] and layer_of(plan, "e2") == [1]
    assert len(plan.layers[1]) == 1 and len(plan.layers[1][0].rows) == 2  # one batch, two rows


async def test_drop_waits_for_the_edges_it_detaches_and_recreate_waits_for_the_drop() -> None:
    changes = [
        vl("a", "P"),
        vl("b", "P"),
        e("e1", "R", "a", "b"),
        ep("e1", "w", 1),
        ep("e1", "w", 1, add=False),
        e("e1", "R", "a", "b", add=False),
        vl("a", "P", add=False),
        e("e2", "R", "a", "b"),  # a vertex update after an edge touched it starts a new mutation
    ]
    plan = await planner().plan(changes)
    assert layer_of(plan, "e1") == [1]  # create+props+delete of one edge coalesce to a delete
    rows = [r for b in plan.layers[1] for r in b.rows]
    assert rows == [{"id": "e1"}]
    assert layer_of(plan, "a") == [0, 2]
    assert layer_of(plan, "e2") == [3]


async def test_property_update_pattern_keeps_the_new_value() -> None:
    plan = await planner().plan([vp("a", "k", 1, add=False), vp("a", "k", 2)])
    assert plan.layers[0][0].rows == [{"id": "a", "props": {"k": 2}}]
    plan = await planner().plan([vp("a", "k", 2), vp("a", "k", 1, add=False)])
    assert plan.layers[0][0].rows == [{"id": "a", "props": {"k": 2}}]
    plan = await planner().plan([vp("a", "k", 2), vp("a", "k", 2, add=False)])
    (removal,) = plan.layers[0]
    assert removal.shape == ("vnull", "k") and removal.rows == [{"id": "a"}]
    assert removal.statements == ("UNWIND $rows AS r MATCH (n:`Replicated` {`~id`: r.id}) SET n.`k` = null",)


async def test_removals_are_one_statement_per_key() -> None:
    plan = await planner().plan([vp("a", "k", 1, add=False), vp("a", "j", 1, add=False), vp("b", "k", 3, add=False)])
    shapes = {b.shape: b.rows for b in plan.layers[0]}
    assert shapes == {("vnull", "k"): [{"id": "a"}, {"id": "b"}], ("vnull", "j"): [{"id": "a"}]}


async def test_numeric_retype_removes_before_setting() -> None:
    plan = await planner().plan([vp("a", "k", 0.0, add=False), vp("a", "k", 0)])
    (batch,) = plan.layers[0]
    assert batch.shape == ("v", (), (), True, ("k",))
    assert batch.statements[0].endswith("SET n.`k` = null")
    assert batch.rows == [{"id": "a", "props": {"k": 0}}]


async def test_label_remove_then_add_nets_out() -> None:
    plan = await planner().plan([vl("a", "X", add=False), vl("a", "X")])
    (batch,) = plan.layers[0]
    assert batch.shape == ("v", ("X",), (), False, ())


async def test_removing_labels_emits_delete_then_remove_with_base_label_in_gone() -> None:
    plan = await planner().plan([vl("a", "P", add=False)])
    (batch,) = plan.layers[0]
    assert batch.rows == [{"id": "a", "gone": ["P", "Replicated"]}]
    assert batch.statements[0].endswith("WHERE all(l IN labels(n) WHERE l IN r.gone) DETACH DELETE n")
    assert batch.statements[1].endswith("REMOVE n:`P`")


async def test_edge_property_types_come_from_the_cache_or_the_sink() -> None:
    asked: list[list[str]] = []

    async def lookup(ids: list[str]) -> dict[str, str]:
        asked.append(ids)
        return {"old": "KNOWS"}

    p = planner(lookup=lookup)
    plan = await p.plan([e("new", "LIKES", "a", "b")])
    plan = await p.plan([ep("new", "w", 1), ep("old", "w", 2), ep("gone", "w", 3)])
    assert asked == [["gone", "old"]]
    shapes = sorted(b.shape for layer in plan.layers for b in layer)
    assert shapes == [("props", "KNOWS", ()), ("props", "LIKES", ())]
    assert [c.id for c in plan.skipped] == ["gone"]
    assert p.edge_types.get("old") == "KNOWS"


async def test_neptune_dialect_has_no_base_label_and_raw_keys() -> None:
    plan = await planner(neptune_dialect()).plan([vl("a", "P`Q"), vp("a", "we`ird", 1), vl("b", "P", add=False)])
    create, remove = plan.layers[0]
    assert create.statements == ("UNWIND $rows AS r MERGE (n {`~id`: r.id}) SET n:`P``Q`, n += r.props",)
    assert create.rows == [{"id": "a", "props": {"we`ird": 1}}]
    assert remove.rows == [{"id": "b", "gone": ["P"]}]


async def test_falkordb_dialect_encodes_names_in_text_and_keys() -> None:
    plan = await planner().plan([vl("a", "P`Q"), vp("a", "5%", 1)])
    (batch,) = plan.layers[0]
    assert ":`P%60Q`" in batch.statements[0]
    assert batch.rows == [{"id": "a", "props": {"5%25": 1}}]


def test_edge_type_cache_is_bounded_lru() -> None:
    cache = EdgeTypeCache(2)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"
    cache.put("c", "C")
    assert cache.get("b") is None and cache.get("a") == "A" and len(cache) == 2
