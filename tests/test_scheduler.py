"""Coalescing, layering and grouping (daemon.scheduler): what may run together, what must wait, what merges."""

from __future__ import annotations

from itertools import count
from typing import Any

from daemon.cypher import falkordb_dialect, neptune_dialect
from daemon.model import (
    EDGE,
    EDGE_PROPERTY,
    VERTEX_LABEL,
    VERTEX_PROPERTY,
    WHOLE_EDGE,
    WHOLE_VERTEX,
    GraphChange,
)
from daemon.scheduler import EdgeTypeCache, Plan, Planner

_seq = count(1)


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


def layers_of(plan: Plan, element_id: str) -> list[int]:
    """The layers in which an element has a row (once per layer)."""
    return sorted(
        {
            i
            for i, layer in enumerate(plan.layers)
            for phase in layer
            for b in phase
            for r in b.rows
            if r["id"] == element_id
        }
    )


def shapes(plan: Plan) -> list[list[list[tuple]]]:
    """Per layer, per phase, the shapes with their rows, to compare whole plans."""
    return [[[(b.shape, b.rows) for b in phase] for phase in layer] for layer in plan.layers]


async def test_vertex_creation_coalesces_into_one_mutation_with_a_row_per_statement() -> None:
    plan = await planner().plan([vl("a", "Person"), vl("a", "Admin"), vp("a", "name", "x"), vp("a", "age", 3)])
    assert plan.n_changes == 4 and plan.n_mutations == 1
    assert shapes(plan) == [
        [
            # FalkorDB: a new vertex is created with its labels first (labelling an existing node is slow there)
            [(("vcreate", "Person"), [{"id": "a"}])],
            [(("vupsert", True, True), [{"id": "a", "props": {"name": "x", "age": 3}}])],
            [(("vlabel", "Person"), [{"id": "a"}]), (("vlabel", "Admin"), [{"id": "a"}])],
        ]
    ]
    (create,), (upsert,), labels = plan.layers[0]
    assert create.statement == (
        "UNWIND $rows AS r OPTIONAL MATCH (n:`Replicated` {`~id`: r.id}) WITH r, n WHERE n IS NULL "
        "CREATE (m:`Replicated`:`Person` {`~id`: r.id})"
    )
    assert upsert.statement == "UNWIND $rows AS r MERGE (n:`Replicated` {`~id`: r.id}) SET n += r.props"
    assert labels[0].statement == "UNWIND $rows AS r MATCH (n:`Replicated` {`~id`: r.id}) SET n:`Person`"


async def test_statements_grow_with_names_not_label_combinations() -> None:
    changes = [vl("a", "A"), vl("a", "B"), vl("b", "B"), vl("b", "A"), vl("c", "A")]
    plan = await planner().plan(changes)
    creates, (upserts,), labels = plan.layers[0]
    assert {b.shape: len(b.rows) for b in creates} == {("vcreate", "A"): 2, ("vcreate", "B"): 1}  # first label
    assert len(upserts.rows) == 3
    assert {b.shape: len(b.rows) for b in labels} == {("vlabel", "A"): 3, ("vlabel", "B"): 2}


async def test_edges_wait_for_their_endpoints_and_share_a_layer() -> None:
    changes = [vl("a", "P"), vl("b", "P"), vl("c", "P"), e("e1", "R", "a", "b"), e("e2", "R", "a", "c")]
    plan = await planner().plan(changes)
    assert layers_of(plan, "a") == [0] and layers_of(plan, "b") == [0]
    assert layers_of(plan, "e1") == [1] and layers_of(plan, "e2") == [1]
    assert shapes(plan)[1] == [
        [(("upsert", "R", False), [{"id": "e1", "from": "a", "to": "b"}, {"id": "e2", "from": "a", "to": "c"}])]
    ]


async def test_drop_waits_for_the_edges_it_detaches_and_later_edges_wait_for_the_drop() -> None:
    changes = [
        vl("a", "P"),
        vl("b", "P"),
        e("e1", "R", "a", "b"),
        ep("e1", "w", 1),
        ep("e1", "w", 1, add=False),
        e("e1", "R", "a", "b", add=False),
        vl("a", "P", add=False),
        e("e2", "R", "a", "b"),
    ]
    plan = await planner().plan(changes)
    assert shapes(plan)[1] == [[(("delete", "R"), [{"id": "e1"}])]]  # create+props+delete of one edge
    assert layers_of(plan, "a") == [0, 2]
    assert shapes(plan)[2] == [
        [(("vdrop",), [{"id": "a", "gone": ["P", "Replicated"]}])],
        [(("vunlabel", "P"), [{"id": "a"}])],
    ]
    assert layers_of(plan, "e2") == [3]


async def test_property_changes_and_label_additions_after_an_edge_join_the_vertex_mutation_before_it() -> None:
    changes = [
        vl("a", "P"),
        vp("a", "k", 1),
        vl("b", "P"),
        e("e1", "R", "a", "b"),
        vp("a", "k", 1, add=False),
        vp("a", "k", 2),
        vl("a", "Q"),
        vp("b", "j", 3),
    ]
    plan = await planner().plan(changes)
    assert plan.n_mutations == 3  # a, b and e1: the changes after the edge need no layer of their own
    assert layers_of(plan, "a") == [0] and layers_of(plan, "b") == [0] and layers_of(plan, "e1") == [1]
    rows = {b.shape: b.rows for b in plan.batches()}
    assert rows[("vupsert", True, True)] == [{"id": "a", "props": {"k": 2}}, {"id": "b", "props": {"j": 3}}]
    assert rows[("vlabel", "Q")] == [{"id": "a"}]


async def test_label_removals_and_whole_edges_still_wait_for_the_edge() -> None:
    plan = await planner().plan([vl("a", "P"), vl("a", "Q"), vl("b", "P"), e("e1", "R", "a", "b"), vl("a", "Q", False)])
    assert layers_of(plan, "a") == [0, 2] and layers_of(plan, "e1") == [1]  # a label removal may drop the vertex
    plan = await planner().plan([vl("a", "P", False), e("e1", "R", "a", "b"), vp("a", "k", 1)])
    assert layers_of(plan, "a") == [0, 2]  # the mutation before the edge may drop the vertex: closed
    plan = await planner().plan([vp("a", "k", 1), e("e1", "R", "a", "b"), vl("a", "Q"), vp("a", "k", 2)])
    assert layers_of(plan, "a") == [0, 2]  # a label addition joins only a mutation that makes sure the vertex exists
    # dropped and re-created before the edge (the new label keeps the vertex): later changes join
    plan = await planner().plan([vl("a", "P", False), vl("a", "Q"), e("e1", "R", "a", "b"), vp("a", "k", 1)])
    assert layers_of(plan, "a") == [0]
    plan = await planner().plan(
        [
            GraphChange(WHOLE_VERTEX, True, "a", "P", {"k": 1}, position=(next(_seq), 1)),
            GraphChange(WHOLE_EDGE, False, "e1", "R", {}, "a", "b", position=(next(_seq), 1)),
            GraphChange(WHOLE_VERTEX, True, "a", "P", {"k": 2}, position=(next(_seq), 1)),
        ]
    )
    # whole elements: a removed edge may delete its endpoints if bare (layer 1), so the next image waits for it
    assert layers_of(plan, "a") == [0, 1, 2]


async def test_property_update_pattern_keeps_the_new_value() -> None:
    for changes in ([vp("a", "k", 1, add=False), vp("a", "k", 2)], [vp("a", "k", 2), vp("a", "k", 1, add=False)]):
        plan = await planner().plan(changes)
        assert shapes(plan) == [[[(("vset",), [{"id": "a", "props": {"k": 2}}])]]]


async def test_removals_of_any_keys_are_one_statement_in_the_last_phase() -> None:
    plan = await planner().plan(
        [vp("a", "k", 2), vp("a", "k", 2, add=False), vp("a", "j", 1, add=False), vp("b", "k", 3, add=False)]
    )
    # one map per removed key: never two nulls in one map (FalkorDB, see daemon.cypher)
    assert shapes(plan) == [
        [[(("vnulls",), [{"id": "a", "removed": [{"k": None}, {"j": None}]}, {"id": "b", "removed": [{"k": None}]}])]]
    ]
    assert plan.layers[0][0][0].statement == (
        "UNWIND $rows AS r MATCH (n:`Replicated` {`~id`: r.id}) UNWIND r.removed AS m SET n += m"
    )


async def test_edge_removals_are_one_statement_per_type_and_neptune_deletes_edges_of_every_type_at_once() -> None:
    changes = [
        vl("a", "P"),
        vl("b", "P"),
        e("e1", "R", "a", "b"),
        e("e2", "S", "b", "a"),
        ep("e1", "w", 1),
        ep("e1", "x", 2),
        ep("e2", "w", 3),
    ]
    p = planner(neptune_dialect())
    await p.plan(changes)
    plan = await p.plan(
        [ep("e1", "w", 1, add=False), ep("e1", "x", 2, add=False), ep("e2", "w", 3, add=False), e("e3", "R", "a", "b")]
    )
    assert sorted((b.shape, b.rows) for b in plan.batches() if b.shape[0] == "enulls") == [
        (("enulls", "R"), [{"id": "e1", "removed": [{"w": None}, {"x": None}]}]),
        (("enulls", "S"), [{"id": "e2", "removed": [{"w": None}]}]),
    ]
    plan = await p.plan([e("e1", "R", "a", "b", add=False), e("e2", "S", "b", "a", add=False)])
    (delete,) = plan.batches()
    assert delete.shape == ("edrop",) and delete.rows == [
        {"id": "e1", "from": "a", "to": "b"},
        {"id": "e2", "from": "b", "to": "a"},
    ]
    assert delete.statement == (
        "UNWIND $rows AS r MATCH (a {`~id`: r.from})-[e {`~id`: r.id}]->(b {`~id`: r.to}) DELETE e"
    )


async def test_numeric_retype_removes_before_setting() -> None:
    plan = await planner().plan([vp("a", "k", 0.0, add=False), vp("a", "k", 0)])
    assert shapes(plan) == [
        [[(("vnulls",), [{"id": "a", "removed": [{"k": None}]}])], [(("vset",), [{"id": "a", "props": {"k": 0}}])]]
    ]


async def test_label_remove_then_add_nets_out() -> None:
    plan = await planner().plan([vl("a", "X", add=False), vl("a", "X")])
    assert shapes(plan) == [
        [
            [(("vcreate", "X"), [{"id": "a"}])],
            [(("vupsert", True, False), [{"id": "a"}])],
            [(("vlabel", "X"), [{"id": "a"}])],
        ]
    ]


async def test_drop_then_recreate_in_one_run() -> None:
    plan = await planner().plan(
        [vp("a", "k", 1, add=False), vl("a", "Old", add=False), vl("a", "New"), vp("a", "j", 2)]
    )
    assert shapes(plan) == [
        [
            [(("vcreate", "New"), [{"id": "a"}])],
            [(("vupsert", True, True), [{"id": "a", "props": {"j": 2}}])],
            [(("vlabel", "New"), [{"id": "a"}])],
            [(("vdrop",), [{"id": "a", "gone": ["Old", "Replicated"]}])],
            [(("vunlabel", "Old"), [{"id": "a"}])],
            [(("vnulls",), [{"id": "a", "removed": [{"k": None}]}])],
        ]
    ]


async def test_edge_property_types_come_from_the_cache_or_the_sink() -> None:
    asked: list[list[str]] = []

    async def lookup(ids: list[str]) -> dict[str, str]:
        asked.append(ids)
        return {"old": "KNOWS"}

    p = planner(lookup=lookup)
    await p.plan([e("new", "LIKES", "a", "b")])
    plan = await p.plan([ep("new", "w", 1), ep("old", "w", 2), ep("gone", "w", 3)])
    assert asked == [["gone", "old"]]
    assert sorted(b.shape for b in plan.batches()) == [("props", "KNOWS"), ("props", "LIKES")]
    assert [c.id for c in plan.skipped] == ["gone"]
    assert p.edge_types.get("old") == "KNOWS"


async def test_neptune_dialect_has_no_base_label_and_raw_keys() -> None:
    plan = await planner(neptune_dialect()).plan([vl("a", "P`Q"), vp("a", "we`ird", 1), vl("b", "P", add=False)])
    statements = {b.shape: (b.statement, b.rows) for b in plan.batches()}
    assert statements[("vupsert", True, True)] == (
        "UNWIND $rows AS r MERGE (n {`~id`: r.id}) SET n += r.props",
        [{"id": "a", "props": {"we`ird": 1}}],
    )
    assert statements[("vlabel", "P`Q")][0].endswith("SET n:`P``Q`")
    assert statements[("vdrop",)][1] == [{"id": "b", "gone": ["P"]}]


async def test_falkordb_dialect_encodes_names_in_text_and_keys() -> None:
    plan = await planner().plan([vl("a", "P`Q"), vp("a", "5%", 1)])
    statements = {b.shape: (b.statement, b.rows) for b in plan.batches()}
    assert statements[("vlabel", "P`Q")][0].endswith("SET n:`P%60Q`")
    assert statements[("vupsert", True, True)][1] == [{"id": "a", "props": {"5%25": 1}}]


def test_edge_type_cache_is_bounded_lru() -> None:
    cache = EdgeTypeCache(2)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"
    cache.put("c", "C")
    assert cache.get("b") is None and cache.get("a") == "A" and len(cache) == 2
