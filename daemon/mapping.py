"""DynamoDB items -> graph elements, by the rules of a `dynamodb` source (`[[sources.rules]]`).

Room in the design: the DynamoDB source reads stream records and hands each one here with the item images it
has; the mapper answers with `GraphChange`s of the whole-element kinds (`vr`, `er`, see `daemon.model`), which
the scheduler orders and the sinks apply like any other change.

* A rule matches an item when every test of its `when` holds; the first matching rule maps it.
* INSERT / MODIFY: the element gets the item's whole new image as its properties (attributes that disappeared
  disappear from the graph). If the old image mapped to another element (another id, label or rule), that
  one is removed first. A MODIFY whose images are equal changes nothing (moto emits those; DynamoDB does not).
* REMOVE: a vertex is stripped and deleted once no edge holds it (`vertex_removes = "keep_edges"`, so the
  replica depends only on the items in the table, whatever order shards are read in) or deleted with its edges
  (`"detach"`); an edge is deleted, and endpoints left as bare placeholders go with it.
* TTL deletions (`userIdentity` of the DynamoDB service) are removes, or marks (`ttl_deletes = "mark"`).
* An item that matches no rule is skipped and counted; one that matches but cannot be mapped (a required
  attribute missing, a template attribute that is not a string or number, a template part that is not there,
  an id or value no target can hold, an attribute value the value rule refuses, an attribute name that is not
  valid Unicode) raises `UnmappableItem`, which the source writes to the dead-letter file. So does an image
  that is not a map of attribute values: whatever the record holds, `ItemMapper.changes` returns an `Outcome`
  or raises `UnmappableItem`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from daemon.config import DynamoDBSourceConfig, MappingRule, template_attributes
from daemon.model import (
    EDGE_PROPERTY,
    VERTEX_LABEL,
    VERTEX_PROPERTY,
    WHOLE_EDGE,
    WHOLE_VERTEX,
    GraphChange,
    Position,
)
from daemon.names import InvalidName, check_name
from daemon.values import ABSENT, INT64_MAX, UnsupportedValue, check_text, dynamodb_number, from_dynamodb, show

Item = dict[str, dict[str, Any]]  # attribute name -> DynamoDB attribute value ({"S": "x"})

TTL_PRINCIPAL = "dynamodb.amazonaws.com"


class UnmappableItem(ValueError):
    """An item matched a rule (None: before any rule, the record's shape) but cannot become its element;
    `reason` says why."""

    def __init__(self, rule: str | None, reason: str) -> None:
        self.rule = rule
        self.reason = reason if rule is None else f"rule {rule!r}: {reason}"
        super().__init__(self.reason)


class Element(NamedTuple):
    """What one item maps to: a vertex (`label`) or an edge (`type`, `from_id`, `to_id`).

    Immutable; a named tuple rather than a frozen dataclass because it is built for every stream record and
    costs a quarter as much to build.
    """

    rule: str
    vertex: bool
    id: str
    name: str  # label or relationship type
    from_id: str | None = None
    to_id: str | None = None
    properties: dict[str, Any] | None = None

    def same_element(self, other: Element) -> bool:
        return (self.vertex, self.id, self.name, self.from_id, self.to_id) == (
            other.vertex,
            other.id,
            other.name,
            other.from_id,
            other.to_id,
        )


@dataclass(slots=True)
class Outcome:
    """The changes for one record, or why it needed none (`skipped`: "no_rule" or "unchanged")."""

    changes: list[GraphChange]
    skipped: str | None = None


class _Ids:
    """A rule's id templates (the element id, and an edge's endpoints) compiled to one function of the item.

    Each `{ATTR}` / `{ATTR[i]}` reference is read and split once per item, even when several templates use it,
    and the templates become `str.format` patterns over those values."""

    def __init__(self, rule: str, templates: list[str], separator: str) -> None:
        self.rule, self.separator = rule, separator
        self.refs: list[tuple[str, int | None]] = []
        self.patterns: list[str] = []
        for template in templates:
            pattern: list[str] = []
            refs = iter(template_attributes(template))
            pos = 0
            while pos < len(template):
                start = template.find("{", pos)
                if start < 0:
                    pattern.append(_literal(template[pos:]))
                    break
                if start > pos:
                    pattern.append(_literal(template[pos:start]))
                ref = next(refs)
                if ref not in self.refs:
                    self.refs.append(ref)
                pattern.append(f"{{{self.refs.index(ref)}}}")
                pos = template.index("}", start) + 1
            self.patterns.append("".join(pattern))

    def render(self, item: Item) -> list[str]:
        values = []
        for attr, index in self.refs:
            value = item.get(attr)
            # the common case inline: a string attribute (what `_key_text` accepts first)
            text = value.get("S") if value.__class__ is dict else None
            if text.__class__ is not str:
                text = _key_text(self.rule, attr, value)
            if index is not None:
                pieces = text.split(self.separator)
                if index >= len(pieces):
                    raise UnmappableItem(
                        self.rule,
                        f"attribute {attr!r} = {text!r} has no part {index} when split on {self.separator!r}",
                    )
                text = pieces[index]
            values.append(text)
        ids = [pattern.format(*values) for pattern in self.patterns]
        for element_id in ids:
            if not (element_id.isascii() and "\x00" not in element_id):
                try:
                    check_text(element_id, "id")
                except UnsupportedValue as exc:
                    raise UnmappableItem(self.rule, str(exc)) from None
        return ids


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _key_text(rule: str, attr: str, value: Any) -> str:
    if value is None:
        raise UnmappableItem(rule, f"attribute {attr!r} is missing")
    if value.__class__ is not dict or len(value) != 1:
        raise UnmappableItem(rule, f"attribute {attr!r} is not a DynamoDB attribute value: {show(value)}")
    ((tag, raw),) = value.items()
    if tag == "S" or tag == "N":
        if raw.__class__ is not str:
            raise UnmappableItem(rule, f"attribute {attr!r}: {tag} value is {type(raw).__name__}")
        if tag == "N":
            try:
                dynamodb_number(raw)
            except UnsupportedValue as exc:
                raise UnmappableItem(rule, f"attribute {attr!r}: {exc}") from None
        return raw
    shown = tag if tag.__class__ is str and tag.isascii() and tag.isalpha() else show(tag)
    raise UnmappableItem(rule, f"attribute {attr!r} is {shown}, not a string or number")


class _CompiledRule:
    def __init__(self, rule: MappingRule, key: set[str]) -> None:
        self.rule = rule
        self.name = rule.name
        self.key_only_tests = all(attr in key for attr in rule.when)
        sep = rule.separator
        if rule.vertex is not None:
            self.vertex = True
            self.label = rule.vertex.label
            self.ids = _Ids(rule.name, [rule.vertex.id], sep)
        else:
            assert rule.edge is not None
            self.vertex = False
            self.label = rule.edge.type
            self.ids = _Ids(rule.name, [rule.edge.id, rule.edge.from_, rule.edge.to], sep)
        self.skip = set(key) | set(rule.exclude) if rule.properties == "*" else set(rule.exclude)
        self.keep = None if rule.properties == "*" else list(rule.properties)
        self.rename = dict(rule.rename)
        self.required = list(rule.required)
        self.tests = [(attr, _test(cond)) for attr, cond in rule.when.items()]
        refs = [attr for template in rule.templates.values() for attr, _ in template_attributes(template)]
        self.key_ids = all(attr in key for attr in refs)  # the element's id(s) come from the key alone
        # Set by ItemMapper: this rule and every rule before it test only key attributes, and its ids come from
        # the key; then an older image of the same item matches this rule too and maps to the same element.
        self.same_element_for_same_key = False

    def matches(self, item: Item, known: Callable[[str], bool] | None = None) -> bool:
        """Every test holds; tests on attributes `known` says the image lacks pass (a keys-only REMOVE)."""
        for attr, test in self.tests:
            if (known is None or known(attr)) and not test(item.get(attr)):
                return False
        return True

    def element(self, item: Item, with_properties: bool) -> Element:
        missing = [a for a in self.required if a not in item]
        if missing:
            raise UnmappableItem(self.name, f"required attribute(s) {', '.join(map(repr, missing))} missing")
        props = self.properties(item) if with_properties else None
        if self.vertex:
            (vertex_id,) = self.ids.render(item)
            return Element(self.name, True, vertex_id, self.label, properties=props)
        edge_id, from_id, to_id = self.ids.render(item)
        return Element(self.name, False, edge_id, self.label, from_id, to_id, props)

    def properties(self, item: Item) -> dict[str, Any]:
        names = item if self.keep is None else [a for a in self.keep if a in item]
        skip, rename = self.skip, self.rename
        out: dict[str, Any] = {}
        for attr in names:
            if attr in skip:
                continue
            value = item[attr]
            # the common case inline: a plain string (ASCII without NUL) under an ASCII name; the rest by the
            # value rule and the name rule
            if value.__class__ is dict and len(value) == 1 and "S" in value:
                text = value["S"]
                if text.__class__ is str and text.isascii() and "\x00" not in text and attr.isascii():
                    out[rename.get(attr, attr)] = text
                    continue
            try:
                check_name(attr, "attribute name")
                value = from_dynamodb(value)
            except (UnsupportedValue, InvalidName) as exc:
                raise UnmappableItem(self.name, f"attribute {show(attr)}: {exc}") from None
            if value is not ABSENT:
                out[rename.get(attr, attr)] = value
        return out


def _test(cond: Any) -> Callable[[dict[str, Any] | None], bool]:
    exists, prefix, expected = cond.exists, cond.begins_with, cond.equals
    if exists is None and expected is None and prefix is not None:  # the common test, specialised

        def begins_with(value: dict[str, Any] | None) -> bool:
            if value.__class__ is not dict:
                return False
            text = value.get("S")
            return text.__class__ is str and text.startswith(prefix)

        return begins_with
    if exists is None and prefix is None and isinstance(expected, str):

        def equals_string(value: dict[str, Any] | None) -> bool:
            return value.__class__ is dict and value.get("S") == expected

        return equals_string

    def test(value: dict[str, Any] | None) -> bool:
        if exists is not None and (value is not None) != exists:
            return False
        if prefix is not None:
            text = value.get("S") if value.__class__ is dict else None
            if text.__class__ is not str or not text.startswith(prefix):
                return False
        return expected is None or (value.__class__ is dict and _equals(value, expected))

    return test


def _equals(value: dict[str, Any], expected: Any) -> bool:
    if isinstance(expected, bool):
        return value.get("BOOL") is expected
    if isinstance(expected, str):
        return value.get("S") == expected
    number = value.get("N")
    if number.__class__ is not str:
        return False
    try:
        return Decimal(number) == Decimal(str(expected))
    except InvalidOperation:
        return False


class ItemMapper:
    """Maps one source's stream records to changes."""

    def __init__(self, cfg: DynamoDBSourceConfig) -> None:
        self.key = set(cfg.key)
        self.rules = [_CompiledRule(rule, self.key) for rule in cfg.rules]
        for i, rule in enumerate(self.rules):
            rule.same_element_for_same_key = rule.key_ids and all(r.key_only_tests for r in self.rules[: i + 1])
        self.vertex_removes = cfg.vertex_removes
        self.ttl_deletes = cfg.ttl_deletes
        self.ttl_mark_property = cfg.ttl_mark_property

    def match(self, item: Item, keys_only: bool = False) -> _CompiledRule | None:
        known = self.key.__contains__ if keys_only else None
        for rule in self.rules:
            if rule.matches(item, known):
                return rule
        return None

    def element(self, item: Item | None, *, keys_only: bool = False, with_properties: bool = True) -> Element | None:
        if item is None:
            return None
        if item.__class__ is not dict:
            raise UnmappableItem(None, f"an item is a map of attribute values, got {type(item).__name__}")
        rule = self.match(item, keys_only)
        return None if rule is None else rule.element(item, with_properties)

    def changes(
        self,
        event: str,
        *,
        keys: Item,
        new: Item | None,
        old: Item | None,
        position: Position,
        partition: str,
        commit_ms: int,
        ttl: bool = False,
    ) -> Outcome:
        """The changes one stream record makes. `new` is the item after the record (None for a REMOVE, or when
        the item is gone by the time a keys-only record was read), `old` the item before it when the stream
        carries it."""

        def removal(el: Element) -> GraphChange:
            if not el.vertex:
                kind = WHOLE_EDGE
            elif self.vertex_removes == "detach":
                kind = VERTEX_LABEL
            else:
                kind = WHOLE_VERTEX
            return GraphChange(kind, False, el.id, el.name, None, el.from_id, el.to_id, position, commit_ms, partition)

        if (
            keys.__class__ is not dict
            or (new is not None and new.__class__ is not dict)
            or (old is not None and old.__class__ is not dict)
        ):
            shapes = ", ".join(
                f"{n} is {type(v).__name__}" for n, v in (("Keys", keys), ("NewImage", new), ("OldImage", old))
            )
            raise UnmappableItem(None, f"the record's item images must be maps of attribute values ({shapes})")
        if commit_ms.__class__ is not int or not 0 <= commit_ms <= INT64_MAX:
            commit_ms = 0  # unknown, as when the record does not say (GraphChange.commit_ms)
        if event == "REMOVE":
            before = self.element(old, with_properties=False) if old is not None else None
            if before is None and old is None:
                before = self.element(keys, keys_only=True, with_properties=False)
            if before is None:
                return Outcome([], "no_rule")
            if ttl and self.ttl_deletes == "mark":
                try:
                    stamp = datetime.fromtimestamp(commit_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                except (OverflowError, ValueError, OSError):
                    raise UnmappableItem(
                        before.rule, f"the record's creation time {show(commit_ms)} ms is out of range"
                    ) from None
                kind = VERTEX_PROPERTY if before.vertex else EDGE_PROPERTY
                mark = GraphChange(
                    kind,
                    True,
                    before.id,
                    self.ttl_mark_property,
                    stamp,
                    before.from_id,
                    before.to_id,
                    position,
                    commit_ms,
                    partition,
                )
                return Outcome([mark])
            return Outcome([removal(before)])

        if new is None:  # a keys-only record whose item is gone now: its REMOVE record follows
            return Outcome([], "item_gone")
        try:
            unchanged = old is not None and old == new
        except RecursionError:  # nested deeper than Python compares; the value rule refuses it below
            unchanged = False
        if unchanged:
            return Outcome([], "unchanged")
        rule = self.match(new)
        after = rule.element(new, True) if rule is not None else None
        before = None
        if old is not None and not (rule is not None and rule.same_element_for_same_key):
            before = self.element(old, with_properties=False)
        out: list[GraphChange] = []
        if before is not None and (after is None or not before.same_element(after)):
            out.append(removal(before))
        if after is not None:
            out.append(
                GraphChange(
                    WHOLE_VERTEX if after.vertex else WHOLE_EDGE,
                    True,
                    after.id,
                    after.name,
                    after.properties,
                    after.from_id,
                    after.to_id,
                    position,
                    commit_ms,
                    partition,
                )
            )
        return Outcome(out, None if out else "no_rule")
