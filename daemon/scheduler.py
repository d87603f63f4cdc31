"""Windows of changes -> layers of batched statements that may run in parallel (DESIGN rule 3).

Two steps, both in one pass over the window in source order:

1. **Coalesce** consecutive changes to one element into one mutation: a vertex's labels and properties
   written by one commit become one row of each statement they need, an edge and its properties one
   `MERGE` row. A run ends as soon as any other change touches the element (an edge touches its endpoints),
   so no change moves past another change it could depend on.
2. **Layer** the mutations with read/write sets. A vertex mutation writes its vertex; an edge mutation writes
   its edge and reads its two endpoints. A mutation goes one layer after the last writer of anything it
   touches, and a writer also after the last reader. So an edge never reaches the sink before its endpoints,
   a vertex drop never races the edges it detaches, and per-element order is source order; edges that only
   share an endpoint may run side by side. Inside a layer mutations are independent.
3. **Group** each layer into `UNWIND $rows` batches, one per statement shape, in fixed phases: a mutation's
   parts that must follow each other (set a property removed for a type change; create a new vertex with its
   labels (FalkorDB); create or find the vertex and set its properties; add its labels; delete it if no label
   is left; remove labels; remove properties) are in successive phases, and the batches of one phase run
   concurrently.

Whole-element changes (`vr` / `er`, from DynamoDB items) coalesce the same way: an ADD replaces the
element's properties (later property changes in the run apply on top), a vertex REMOVE strips the vertex and
deletes it unless edges still hold it, an edge REMOVE deletes the edge and then its endpoints if they are bare
placeholders no edge holds any more (see `daemon.cypher`). Their mutations, the common ones of a DynamoDB source,
take their rows straight into their layer's batches, found once per layer by label or edge type; every other
mutation goes through `Planner._parts`, which gives the same rows.

Edge-property records carry only the edge id, but a relationship is found by type (FalkorDB indexes only
under a type), so the planner remembers each edge's type from `e` records (a bounded LRU) and asks the sink
for the ones it has not seen, e.g. after a restart.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from daemon.cypher import (
    Dialect,
    edge_delete_between_statement,
    edge_delete_statement,
    edge_property_removals_statement,
    edge_props_statement,
    edge_replace_statement,
    edge_upsert_statement,
    vertex_add_label_statement,
    vertex_create_statement,
    vertex_delete_orphan_statement,
    vertex_delete_unlabelled_statement,
    vertex_property_removals_statement,
    vertex_remove_label_statement,
    vertex_replace_statement,
    vertex_set_statement,
    vertex_upsert_statement,
)
from daemon.model import EDGE, EDGE_PROPERTY, VERTEX_LABEL, VERTEX_PROPERTY, WHOLE_EDGE, WHOLE_VERTEX, GraphChange
from daemon.names import InvalidName

EDGE_UPSERT, EDGE_PROPS, EDGE_DELETE, EDGE_NOOP = "upsert", "props", "delete", "noop"


# A mutation's label maps, `removed` and `retyped` start as these shared empty values and become a dict / set of
# their own at their first write (most mutations are one change and never write them); readers iterate and test
# them alike. `props` is the whole-element change's own dict while `shared` is set, copied at the first write.
Labels = dict[str, None] | tuple[()]
NO_LABELS: tuple[()] = ()


@dataclass(slots=True)
class VertexMutation:
    id: str
    layer: int
    add_labels: Labels = NO_LABELS
    remove_labels: Labels = NO_LABELS
    props: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, Any] | None = None  # last value removed per key in this run
    retyped: set[str] | tuple[()] = ()
    replace: bool = False  # `props` is every property the vertex holds (SET n = props)
    orphan_only: bool = False  # removed labels delete the vertex only if no edge holds it (no DETACH)
    changes: list[GraphChange] = field(default_factory=list)
    shared: bool = False  # `props` is a change's `value`: copy it before writing

    def merge(self, change: GraphChange) -> None:
        self.changes.append(change)
        kind, key = change.kind, change.key
        if kind == VERTEX_PROPERTY:
            _merge_property(self, change)
            return
        if change.add:
            if self.remove_labels:
                self.remove_labels.pop(key, None)  # type: ignore[union-attr]
            if self.add_labels:
                self.add_labels[key] = None  # type: ignore[index]
            else:
                self.add_labels = {key: None}
        else:
            if self.add_labels:
                self.add_labels.pop(key, None)  # type: ignore[union-attr]
            if self.remove_labels:
                self.remove_labels[key] = None  # type: ignore[index]
            else:
                self.remove_labels = {key: None}
        if kind == WHOLE_VERTEX:
            self.replace = True
            self.removed, self.retyped = None, ()
            if change.add:
                self.props, self.shared = change.value, True
            else:
                self.orphan_only = True
                self.props, self.shared = {}, False


@dataclass(slots=True)
class EdgeMutation:
    id: str
    layer: int
    action: str
    type: str | None = None
    from_id: str | None = None
    to_id: str | None = None
    props: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, Any] | None = None  # last value removed per key in this run
    retyped: set[str] | tuple[()] = ()
    replace: bool = False  # a whole edge: endpoints MERGEd, `props` is every property (SET e = props)
    collect_endpoints: bool = False  # after a delete, remove endpoints left as bare placeholders
    changes: list[GraphChange] = field(default_factory=list)
    shared: bool = False  # `props` is a change's `value`: copy it before writing


Mutation = VertexMutation | EdgeMutation

_new = object.__new__


def _vertex_mutation(
    id: str,
    layer: int,
    add_labels: Labels,
    remove_labels: Labels,
    props: dict[str, Any],
    removed: dict[str, Any] | None,
    replace: bool,
    orphan_only: bool,
    changes: list[GraphChange],
    shared: bool,
) -> VertexMutation:
    """`VertexMutation(...)` with nothing retyped, without the class call (the dataclass `__init__` reached
    through the type costs more than the slot stores; the planner builds one a change)."""
    m = _new(VertexMutation)
    m.id = id
    m.layer = layer
    m.add_labels = add_labels
    m.remove_labels = remove_labels
    m.props = props
    m.removed = removed
    m.retyped = ()
    m.replace = replace
    m.orphan_only = orphan_only
    m.changes = changes
    m.shared = shared
    return m


def _edge_mutation(
    id: str,
    layer: int,
    action: str,
    type: str | None,
    from_id: str | None,
    to_id: str | None,
    props: dict[str, Any],
    replace: bool,
    collect_endpoints: bool,
    changes: list[GraphChange],
    shared: bool,
) -> EdgeMutation:
    """`EdgeMutation(...)` with nothing removed or retyped, without the class call (see `_vertex_mutation`)."""
    m = _new(EdgeMutation)
    m.id = id
    m.layer = layer
    m.action = action
    m.type = type
    m.from_id = from_id
    m.to_id = to_id
    m.props = props
    m.removed = None
    m.retyped = ()
    m.replace = replace
    m.collect_endpoints = collect_endpoints
    m.changes = changes
    m.shared = shared
    return m


def _merge_property(m: VertexMutation | EdgeMutation, change: GraphChange) -> None:
    """Fold one property change into a run's net properties (None = remove the key).

    A REMOVE of the value set earlier in the run, or of a value set before the run, removes the key; a REMOVE
    of an older value after an ADD of a newer one (either order within a commit) keeps the new one. Windows hold
    whole commits (see `daemon.pipeline`), so both halves of such an update are always in one run.
    `retyped` collects keys whose value changes type but not number inside the run (0.0 -> 0): FalkorDB skips
    an update to a numerically equal value, so those keys are removed before they are set.
    """
    key, value, props = change.key, change.value, m.props
    if m.shared:
        m.props = props = dict(props)
        m.shared = False
    if m.replace:  # the run holds every property: a removal just drops the key
        if change.add:
            props[key] = value
        else:
            props.pop(key, None)
        return
    removed = m.removed
    if change.add:
        if removed is not None and key in removed and _same_number_other_type(removed[key], value):
            m.retyped = {*m.retyped, key}
        props[key] = value
        return
    if removed is None:
        m.removed = {key: value}
    else:
        removed[key] = value
    current = props.get(key)
    if current is None or (type(current) is type(value) and current == value):
        props[key] = None
    elif _same_number_other_type(current, value):
        m.retyped = {*m.retyped, key}


def _same_number_other_type(a: Any, b: Any) -> bool:
    return type(a) is not type(b) and a == b


def _split_props(props: dict[str, Any], encode: Callable[[str], str] | None) -> tuple[dict[str, Any], list[str]]:
    """(properties to set, keys to remove), names encoded for the target."""
    sets: dict[str, Any] = {}
    removed: list[str] = []
    for key, value in props.items():
        if value is None:
            removed.append(key)
        else:
            sets[encode(key) if encode else key] = value
    return sets, removed


@dataclass(slots=True)
class Batch:
    """One statement shape's rows in one phase of one layer.

    `no_effect` is set for statements that find their element with MATCH and report the ids they matched
    (`RETURN collect(r.id) AS matched`): a row whose id is not reported took no effect, for that reason.
    """

    shape: tuple[Any, ...]
    statement: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    mutations: list[Mutation] = field(default_factory=list)
    no_effect: str | None = None


@dataclass(slots=True)
class Plan:
    """Layers in order; each layer's phases in order; each phase's batches may run concurrently.

    `skipped`: changes that need not run (properties of an edge that is in neither the window nor the target).
    `rejected`: changes the planner refuses, with the reason (a reserved name, a name no statement can hold);
    they go to the dead-letter file and are not applied.
    """

    layers: list[list[list[Batch]]]
    skipped: list[GraphChange]
    n_changes: int
    rejected: list[tuple[GraphChange, str]] = field(default_factory=list)

    def batches(self) -> Iterator[Batch]:
        for layer in self.layers:
            for phase in layer:
                yield from phase

    @property
    def n_mutations(self) -> int:
        return len({id(m) for b in self.batches() for m in b.mutations})


_VREPLACE_LABELLED, _VREPLACE = ("vreplace", True), ("vreplace", False)  # statement shapes of a whole vertex
_VNULLS = ("vnulls",)  # property removals of vertices, any keys
_EDROP = ("edrop",)  # edges of any type deleted by id between their endpoints (Neptune)

# Phases of a layer, in execution order.
RETYPE, CREATE, UPSERT, ADD_LABEL, DROP, REMOVE_LABEL, REMOVE_PROPERTY = range(7)
_PHASES = 7

# Statement kinds that MATCH their element and report what they matched; the reason a missed row took no effect.
NO_EFFECT_REASONS = {"vset": "vertex_missing", EDGE_UPSERT: "endpoint_missing", EDGE_PROPS: "edge_missing"}


EdgeTypeLookup = Callable[[list[str]], Awaitable[dict[str, str]]]


class EdgeTypeCache:
    """Bounded LRU of edge id -> relationship type."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._types: OrderedDict[str, str] = OrderedDict()

    def get(self, edge_id: str) -> str | None:
        found = self._types.get(edge_id)
        if found is not None:
            self._types.move_to_end(edge_id)
        return found

    def put(self, edge_id: str, edge_type: str) -> None:
        if self.capacity <= 0:
            return
        self._types[edge_id] = edge_type
        self._types.move_to_end(edge_id)
        if len(self._types) > self.capacity:
            self._types.popitem(last=False)

    def __len__(self) -> int:
        return len(self._types)


class Planner:
    """Turns windows of changes into `Plan`s for one sink dialect."""

    def __init__(self, dialect: Dialect, lookup_edge_types: EdgeTypeLookup, edge_type_cache_size: int) -> None:
        self.dialect = dialect
        self._lookup_edge_types = lookup_edge_types
        self.edge_types = EdgeTypeCache(edge_type_cache_size)
        self._statement_cache: dict[tuple[Any, ...], str] = {}
        # What the dialect fixes for every mutation's rows (see `_parts`).
        self._identity = dialect.name == "neptune"  # ids are Neptune's `~id`, not a property
        self._gone_extra = [dialect.encode_name(dialect.base_label)] if dialect.base_label else []
        # What a bare placeholder vertex holds: FalkorDB its base label and id property; Neptune gives a vertex
        # created without a label the label `vertex`, and `~id` is not a property.
        self._bare_labels = ["vertex"] if self._identity else self._gone_extra
        self._bare_keys = [] if self._identity else [dialect.id_property]

    async def plan(self, changes: Iterable[GraphChange]) -> Plan:
        rejected: list[tuple[GraphChange, str]] = []
        mutations, n_changes, untyped = self._coalesce_and_layer(changes, rejected)
        skipped = await self._resolve_edge_types(untyped) if untyped else []
        layers = self._group(mutations, rejected)
        return Plan(layers, skipped, n_changes, rejected)

    def _coalesce_and_layer(
        self, changes: Iterable[GraphChange], rejected: list[tuple[GraphChange, str]]
    ) -> tuple[list[Mutation], int, list[EdgeMutation]]:
        """Mutations of the admissible changes, the number of changes (rejected ones included), and the edge
        property mutations whose edge type the cache did not know (see `_resolve_edge_types`).

        A change that touches what identifies an element in the target goes to `rejected` instead: the id
        property holds the element's source id (a record setting it would re-key the element, and later records
        for the real id would miss it), and the base label is how FalkorDB finds a replicated vertex.
        """
        mutations: list[Mutation] = []
        untyped: list[EdgeMutation] = []
        # Per vertex, one list (one lookup a change): [last layer that wrote it, last layer that read it (edges on
        # it), its latest mutation while nothing else touched it, OPEN_ATTRS]. OPEN_ATTRS is the vertex's latest
        # mutation after `e` changes touched it, unless it is whole or may delete the vertex (removes labels
        # without adding one; one that adds a label keeps the vertex): it still takes the vertex's property
        # changes, and label additions if it makes sure the vertex exists (adds a label itself). Those commute
        # with what an edge needs of its endpoints (that they exist), so they need no later layer.
        vertices: dict[str, list[Any]] = {}
        edge_write: dict[str, int] = {}
        open_edge: dict[str, EdgeMutation] = {}
        cache = self.edge_types
        types, capacity = cache._types, cache.capacity  # `EdgeTypeCache.put`, inline
        id_key, base = self.dialect.id_property, self.dialect.base_label
        reserved_key = f"reserved_name: property key {id_key!r} is the id property of the target"
        reserved_label = f"reserved_name: label {base!r} is the base label of the target"
        n = 0
        for c in changes:
            n += 1
            kind = c.kind
            if kind == WHOLE_VERTEX:  # a DynamoDB item's vertex: its label and every property, or its removal
                add = c.add
                if add and id_key in c.value:
                    rejected.append((c, reserved_key))
                    continue
                key = c.key
                if base is not None and key == base:  # (a str never equals None: skip the call)
                    rejected.append((c, reserved_label))
                    continue
                vertex_id = c.id
                state = vertices.get(vertex_id)
                vm = None if state is None else state[2]
                if vm is None:
                    if state is None:
                        layer = 0
                    else:
                        layer = state[0]
                        read = state[1]
                        layer = (layer if layer > read else read) + 1
                    if add:
                        vm = _vertex_mutation(
                            vertex_id, layer, {key: None}, NO_LABELS, c.value, None, True, False, [c], True
                        )
                    else:
                        vm = _vertex_mutation(
                            vertex_id, layer, NO_LABELS, {key: None}, {}, None, True, True, [c], False
                        )
                    if state is None:
                        vertices[vertex_id] = [layer, -1, vm, None]
                    else:
                        state[0] = layer
                        state[2] = vm
                        state[3] = None
                    mutations.append(vm)
                else:
                    vm.merge(c)
                continue

            if kind == VERTEX_PROPERTY or kind == VERTEX_LABEL:
                key = c.key
                if kind == VERTEX_PROPERTY:
                    if key == id_key:
                        rejected.append((c, reserved_key))
                        continue
                elif base is not None and key == base:
                    rejected.append((c, reserved_label))
                    continue
                vertex_id = c.id
                state = vertices.get(vertex_id)
                vm = None if state is None else state[2]
                if vm is None and state is not None and (kind == VERTEX_PROPERTY or c.add):
                    vm = state[3]
                    if vm is not None and kind == VERTEX_LABEL and not vm.add_labels:
                        vm = None
                if vm is None:
                    if state is None:
                        layer = 0
                    else:
                        layer = state[0]
                        read = state[1]
                        layer = (layer if layer > read else read) + 1
                    # What `merge` makes of the first change, built in one step.
                    if kind == VERTEX_PROPERTY:
                        if c.add:
                            vm = _vertex_mutation(
                                vertex_id, layer, NO_LABELS, NO_LABELS, {key: c.value}, None, False, False, [c], False
                            )
                        else:
                            vm = _vertex_mutation(
                                vertex_id,
                                layer,
                                NO_LABELS,
                                NO_LABELS,
                                {key: None},
                                {key: c.value},
                                False,
                                False,
                                [c],
                                False,
                            )
                    elif c.add:
                        vm = _vertex_mutation(
                            vertex_id, layer, {key: None}, NO_LABELS, {}, None, False, False, [c], False
                        )
                    else:
                        vm = _vertex_mutation(
                            vertex_id, layer, NO_LABELS, {key: None}, {}, None, False, False, [c], False
                        )
                    if state is None:
                        vertices[vertex_id] = [layer, -1, vm, None]
                    else:
                        state[0] = layer
                        state[2] = vm
                        state[3] = None
                    mutations.append(vm)
                elif kind == VERTEX_PROPERTY and c.add and vm.removed is None and not vm.replace:
                    vm.props[key] = c.value  # `_merge_property`, nothing removed in the run
                    vm.changes.append(c)
                else:
                    vm.merge(c)
                continue

            edge_id = c.id
            if kind == EDGE_PROPERTY:
                if c.key == id_key:
                    rejected.append((c, reserved_key))
                    continue
                em = open_edge.get(edge_id)
                if em is not None and em.action in (EDGE_UPSERT, EDGE_PROPS):
                    em.changes.append(c)
                    _merge_property(em, c)
                    continue
                layer = edge_write.get(edge_id, -1) + 1
                em = _edge_mutation(
                    edge_id, layer, EDGE_PROPS, cache.get(edge_id), None, None, {}, False, False, [c], False
                )
                _merge_property(em, c)
                edge_write[edge_id] = layer
                open_edge[edge_id] = em
                mutations.append(em)
                if em.type is None:
                    untyped.append(em)
                continue

            whole = kind == WHOLE_EDGE
            assert whole or kind == EDGE
            key, add = c.key, c.add
            if whole and add and id_key in c.value:
                rejected.append((c, reserved_key))
                continue
            em = open_edge.get(edge_id)
            if capacity > 0:  # `EdgeTypeCache.put`, inline
                if edge_id in types:
                    types.move_to_end(edge_id)
                types[edge_id] = key
                if len(types) > capacity:
                    types.popitem(last=False)
            source, target = c.from_id, c.to_id
            assert source is not None and target is not None
            source_state = vertices.get(source)
            if source_state is None:
                source_state = vertices[source] = [-1, -1, None, None]
            target_state = vertices.get(target)
            if target_state is None:
                target_state = vertices[target] = [-1, -1, None, None]
            if whole:  # the endpoints' open mutations end here (an item's edge may MERGE them)
                source_state[2] = None
                target_state[2] = None
            else:
                for state in (source_state, target_state):
                    vm = state[2]
                    if vm is not None:
                        state[2] = None
                        if not vm.replace and (vm.add_labels or not vm.remove_labels):
                            state[3] = vm
            source_written = source_state[0]
            target_written = target_state[0]
            changes_of = None
            if em is not None:
                if add:
                    if (
                        whole
                        and em.replace
                        and em.from_id == source
                        and em.to_id == target
                        and em.type == key
                        and source_written < em.layer
                        and target_written < em.layer
                    ):  # a newer image of the same edge, its endpoints untouched since: one MERGE with the last image
                        em.props, em.shared = c.value, True
                        em.changes.append(c)
                        continue
                elif em.action == EDGE_UPSERT:
                    em.action = EDGE_DELETE
                    em.changes.append(c)
                    em.props, em.shared = {}, False
                    em.collect_endpoints = whole
                    open_edge.pop(edge_id)
                    continue
                elif em.action == EDGE_PROPS:
                    em.action = EDGE_NOOP  # property removals of an edge that is deleted next
                    changes_of, em.changes = [*em.changes, c], []
            layer = edge_write.get(edge_id, -1)
            if source_written > layer:
                layer = source_written
            if target_written > layer:
                layer = target_written
            layer += 1
            if whole and add:
                em = _edge_mutation(edge_id, layer, EDGE_UPSERT, key, source, target, c.value, True, False, [c], True)
            else:
                em = _edge_mutation(
                    edge_id,
                    layer,
                    EDGE_UPSERT if add else EDGE_DELETE,
                    key,
                    source,
                    target,
                    {},
                    False,
                    whole,
                    changes_of or [c],
                    False,
                )
            edge_write[edge_id] = layer
            if source_state[1] < layer:
                source_state[1] = layer
            if target_state[1] < layer:
                target_state[1] = layer
            mutations.append(em)
            if add:
                open_edge[edge_id] = em
            else:
                open_edge.pop(edge_id, None)
        return mutations, n, untyped

    async def _resolve_edge_types(self, untyped: list[EdgeMutation]) -> list[GraphChange]:
        unknown = [m for m in untyped if m.action == EDGE_PROPS]  # not deleted later in the window
        if not unknown:
            return []
        found = await self._lookup_edge_types(sorted({m.id for m in unknown}))
        skipped: list[GraphChange] = []
        for m in unknown:
            edge_type = found.get(m.id)
            if edge_type is None:
                # The edge is neither in this window nor in the sink: it was deleted later in the source's
                # history (this is a replay) or its creation was dead-lettered. Setting its properties is a no-op.
                m.action = EDGE_NOOP
                skipped.extend(m.changes)
            else:
                m.type = edge_type
                self.edge_types.put(m.id, edge_type)
        return skipped

    def _statement(self, shape: tuple[Any, ...]) -> str:
        found = self._statement_cache.get(shape)
        if found is None:
            d = self.dialect
            kind, *args = shape
            if kind == "vupsert":
                statement = vertex_upsert_statement(d, *args)
            elif kind == "vset":
                statement = vertex_set_statement(d)
            elif kind == "vlabel":
                statement = vertex_add_label_statement(d, *args)
            elif kind == "vdrop":
                statement = vertex_delete_unlabelled_statement(d)
            elif kind == "vcreate":
                statement = vertex_create_statement(d, *args)
            elif kind == "vreplace":
                statement = vertex_replace_statement(d, *args)
            elif kind == "vorphan":
                statement = vertex_delete_orphan_statement(d)
            elif kind == "ereplace":
                statement = edge_replace_statement(d, *args)
            elif kind == "vunlabel":
                statement = vertex_remove_label_statement(d, *args)
            elif kind == "vnulls":
                statement = vertex_property_removals_statement(d)
            elif kind == "edrop":
                statement = edge_delete_between_statement(d)
            elif kind == EDGE_UPSERT:
                statement = edge_upsert_statement(d, *args)
            elif kind == EDGE_PROPS:
                statement = edge_props_statement(d, *args)
            elif kind == EDGE_DELETE:
                statement = edge_delete_statement(d, *args)
            else:
                assert kind == "enulls"
                statement = edge_property_removals_statement(d, *args)
            found = self._statement_cache[shape] = statement
        return found

    def _group(self, mutations: list[Mutation], rejected: list[tuple[GraphChange, str]]) -> list[list[list[Batch]]]:
        layers: list[list[dict[tuple[Any, ...], Batch]]] = []
        # Per layer, the batches of a whole element's rows by label or edge type: whole vertices added, whole
        # vertices removed, whole edges added (see `_whole_batches`). The common DynamoDB mutations take their
        # rows there without `_parts`; every other mutation, and any whose names fail, goes through `_parts`.
        fast: list[tuple[dict[str, tuple[Batch, ...]], ...]] = []
        statements = self._statement_cache
        identity = self._identity
        # Each branch reads its own type's attributes: an attribute read at one site on both mutation types is
        # not specialised by the interpreter (a generic lookup each time).
        for m in mutations:
            if type(m) is VertexMutation:
                number = m.layer
                while len(layers) <= number:
                    layers.append([{} for _ in range(_PHASES)])
                    fast.append(({}, {}, {}))
                if m.replace:
                    m_id = m.id
                    props = m.props
                    try:  # what `_parts` would give, or InvalidName (then `_parts` says it again, below)
                        props = self._replacement(props, m_id)
                        if not m.remove_labels:
                            if len(m.add_labels) == 1:
                                (label,) = m.add_labels  # type: ignore[misc]
                                batches = fast[number][0].get(label)
                                if batches is None:
                                    batches = fast[number][0][label] = self._whole_batches(layers[number], 0, label)
                                if not identity:
                                    created = batches[2]
                                    created.rows.append({"id": m_id})
                                    created.mutations.append(m)
                                upsert, labelled = batches[0], batches[1]
                                upsert.rows.append({"id": m_id, "props": props})
                                upsert.mutations.append(m)
                                labelled.rows.append({"id": m_id})
                                labelled.mutations.append(m)
                                continue
                        elif m.orphan_only and not m.add_labels and len(m.remove_labels) == 1:  # type: ignore[arg-type]
                            (label,) = m.remove_labels  # type: ignore[misc]
                            batches = fast[number][1].get(label)
                            if batches is None:
                                batches = fast[number][1][label] = self._whole_batches(layers[number], 1, label)
                            upsert, dropped, unlabelled = batches[0], batches[1], batches[2]
                            upsert.rows.append({"id": m_id, "props": props})
                            upsert.mutations.append(m)
                            dropped.rows.append({"id": m_id, "gone": batches[3], "keep": self._bare_keys})
                            dropped.mutations.append(m)
                            unlabelled.rows.append({"id": m_id})
                            unlabelled.mutations.append(m)
                            continue
                    except InvalidName:
                        pass
            else:
                action = m.action
                if action == EDGE_NOOP:
                    continue
                number = m.layer
                while len(layers) <= number:
                    layers.append([{} for _ in range(_PHASES)])
                    fast.append(({}, {}, {}))
                if m.replace and action == EDGE_UPSERT:
                    m_id = m.id
                    props = m.props
                    try:
                        props = self._replacement(props, m_id)
                        edge_type: str = m.type  # type: ignore[assignment]
                        batches = fast[number][2].get(edge_type)
                        if batches is None:
                            batches = fast[number][2][edge_type] = self._whole_batches(layers[number], 2, edge_type)
                        upsert = batches[0]
                        upsert.rows.append({"id": m_id, "from": m.from_id, "to": m.to_id, "props": props})
                        upsert.mutations.append(m)
                        continue
                    except InvalidName:
                        pass
            try:  # all of a mutation's statements, or none: a name no statement can hold rejects the mutation
                parts = self._parts(m)
                for _, shape, _ in parts:
                    if shape not in statements:
                        self._statement(shape)
            except InvalidName as exc:
                rejected.extend((c, f"invalid_name: {exc}") for c in m.changes)
                continue
            layer = layers[number]
            for phase, shape, row in parts:
                batches_of_phase = layer[phase]
                batch = batches_of_phase.get(shape)
                if batch is None:
                    batch = batches_of_phase[shape] = Batch(
                        shape, statements[shape], no_effect=NO_EFFECT_REASONS.get(shape[0])
                    )
                batch.rows.append(row)
                batch.mutations.append(m)
        out = [[list(phase.values()) for phase in layer if phase] for layer in layers]
        return [layer for layer in out if layer]

    def _replacement(self, props: dict[str, Any], element_id: str) -> dict[str, Any]:
        """A whole element's properties as its row carries them (`SET n = r.props`): the keys with a value, names
        encoded for the target, and on FalkorDB its id property. On Neptune with no None (the common DynamoDB
        case) the mutation's own dict, every property under its own name."""
        if self._identity:
            if None not in props.values():
                return props
            return {k: v for k, v in props.items() if v is not None}
        encode = self.dialect.encode_name
        out = {encode(k): v for k, v in props.items() if v is not None}
        out[self.dialect.id_property] = element_id
        return out

    def _whole_batches(self, layer: list[dict[tuple[Any, ...], Batch]], kind: int, name: str) -> tuple[Any, ...]:
        """A layer's batches for the rows of a whole element, created in the order `_parts` gives the shapes;
        kind 0: a whole vertex added (its label's vreplace and vlabel batches, then FalkorDB's vcreate), 1: a
        whole vertex removed (vreplace, vorphan, vunlabel, and the vorphan row's `gone` list), 2: a whole edge
        added (its ereplace batch). Raises InvalidName for a name no statement can hold."""
        if kind == 0:
            phases: list[tuple[int, tuple[Any, ...]]] = []
            if not self._identity:
                phases.append((CREATE, ("vcreate", name)))
            phases += [(UPSERT, _VREPLACE_LABELLED), (ADD_LABEL, ("vlabel", name))]
        elif kind == 1:
            phases = [(UPSERT, _VREPLACE), (DROP, ("vorphan",)), (REMOVE_LABEL, ("vunlabel", name))]
        else:
            phases = [(UPSERT, ("ereplace", name))]
        # every name checked before any batch is made
        statements = [self._statement(shape) for _, shape in phases]
        gone = [self.dialect.encode_name(name), *self._bare_labels] if kind == 1 else None
        found: list[Any] = []
        for (phase, shape), statement in zip(phases, statements, strict=True):
            batch = layer[phase].get(shape)
            if batch is None:
                batch = layer[phase][shape] = Batch(shape, statement, no_effect=NO_EFFECT_REASONS.get(shape[0]))
            found.append(batch)
        if kind == 0 and not self._identity:
            found.append(found.pop(0))  # vcreate last: the caller reads vreplace and vlabel at 0 and 1
        if gone is not None:
            found.append(gone)
        return tuple(found)

    def _parts(self, m: Mutation) -> list[tuple[int, tuple[Any, ...], dict[str, Any]]]:
        """(phase, statement shape, row) of each statement a mutation needs."""
        encode = self.dialect.encode_name
        identity, gone_extra = self._identity, self._gone_extra
        bare_labels, bare_keys = self._bare_labels, self._bare_keys
        parts: list[tuple[int, tuple[Any, ...], dict[str, Any]]] = []
        put = parts.append
        # The attributes both types have, read in a branch per type (see `_group`).
        if type(m) is VertexMutation:
            vertex = True
            m_id = m.id
            m_props = m.props
            replace = m.replace
            m_retyped = m.retyped
            nulls: tuple[Any, ...] = _VNULLS  # removals, any keys (daemon.cypher)
        else:
            vertex = False
            m_id = m.id
            m_props = m.props
            replace = m.replace
            m_retyped = m.retyped
            nulls = ("enulls", m.type)
        if replace:  # a whole element: its row's properties, nothing removed by key
            props, removed = self._replacement(m_props, m_id), []
        else:
            props, removed = _split_props(m_props, None if identity else encode)
        if m_retyped:
            retyped = [key for key in m_retyped if m_props.get(key) is not None]
            if retyped:
                maps = [{key if identity else encode(key): None} for key in retyped]
                put((RETYPE, nulls, {"id": m_id, "removed": maps}))
        if vertex:
            # FalkorDB: new vertices are created with their labels first (see `vertex_create_statement`). Neptune
            # keeps MERGE-then-label until creating with labels is verified there. One label: statements grow
            # with names, not label combinations; the others are added after.
            if m.add_labels and not identity:
                put((CREATE, ("vcreate", next(iter(m.add_labels))), {"id": m_id}))
            if replace:
                put((UPSERT, _VREPLACE_LABELLED if m.add_labels else _VREPLACE, {"id": m_id, "props": props}))
            elif m.add_labels or props:
                row: dict[str, Any] = {"id": m_id}
                if props:
                    row["props"] = props
                # a vertex that is only found (no label added) reports whether it was there
                put((UPSERT, ("vupsert", True, bool(props)) if m.add_labels else ("vset",), row))
            for label in m.add_labels:
                put((ADD_LABEL, ("vlabel", label), {"id": m_id}))
            if m.remove_labels:
                if replace:
                    gone = [encode(label) for label in m.remove_labels] + bare_labels
                    drop_row = {"id": m_id, "gone": gone, "keep": bare_keys}
                    put((DROP, ("vorphan" if m.orphan_only else "vdrop",), drop_row))
                else:
                    gone = [encode(label) for label in m.remove_labels] + gone_extra
                    put((DROP, ("vdrop",), {"id": m_id, "gone": gone}))
                for label in m.remove_labels:
                    put((REMOVE_LABEL, ("vunlabel", label), {"id": m_id}))
            if replace:
                return parts
        elif m.action == EDGE_DELETE:
            if identity:  # Neptune finds an edge by id whatever its type: one statement for every type
                put((UPSERT, _EDROP, {"id": m_id, "from": m.from_id, "to": m.to_id}))
            else:
                put((UPSERT, (EDGE_DELETE, m.type), {"id": m_id}))
            if m.collect_endpoints:
                for end in dict.fromkeys((m.from_id, m.to_id)):
                    put((DROP, ("vorphan",), {"id": end, "gone": bare_labels, "keep": bare_keys}))
            return parts
        elif replace:
            put((UPSERT, ("ereplace", m.type), {"id": m_id, "from": m.from_id, "to": m.to_id, "props": props}))
            return parts
        elif m.action == EDGE_UPSERT:
            row = {"id": m_id, "from": m.from_id, "to": m.to_id}
            if props:
                row["props"] = props
            put((UPSERT, (EDGE_UPSERT, m.type, bool(props)), row))
        elif props:
            put((UPSERT, (EDGE_PROPS, m.type), {"id": m_id, "props": props}))
        if removed:
            maps = [{key: None} for key in removed] if identity else [{encode(key): None} for key in removed]
            put((REMOVE_PROPERTY, nulls, {"id": m_id, "removed": maps}))
        return parts
