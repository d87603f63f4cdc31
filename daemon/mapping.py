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

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from daemon.config import DynamoDBSourceConfig, MappingRule, TemplateRef, template_refs
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
    """A rule's id templates (the element id, and an edge's endpoints) compiled to Python source once, when the
    mapper is built: each attribute a template names is read once (and matched against its `regex` once), each
    reference (`{ATTR}`, `{ATTR[i]}`, `{ATTR[i:]}`, `{ATTR~GROUP}`) is computed once even when several templates
    use it, and each template is a concatenation of constants and those values. Only `repr` of the config's
    strings reaches the source.

    `lines` compute the ids from `item` into `i0`, `i1`, ... (template order), or raise `UnmappableItem` as the
    rule says; they use the names `v`, `t*`, `m*`, `p*`, `r*`, `i*` and the globals in `namespace`. The rule's
    generated code (`_rule_code`) embeds them; `render(item)` is them on their own, returning the ids as a tuple.
    """

    def __init__(self, rule: str, templates: list[str], separator: str, patterns: dict[str, re.Pattern[str]]) -> None:
        self.rule, self.separator = rule, separator
        attrs: list[str] = []  # attribute -> t{i}
        refs: list[TemplateRef] = []  # reference -> r{i}
        lines: list[str] = []
        split: set[int] = set()  # attributes (by position) split into p{i} already
        matched: set[int] = set()  # attributes matched against their regex into m{i} already
        ids: list[list[str]] = []  # per template: its expression's terms
        literals: list[str] = []
        for template in templates:
            terms: list[str] = []
            for literal, ref in _template_pieces(template):
                if literal:
                    terms.append(repr(literal))
                    literals.append(literal)
                if ref is None:
                    continue
                if ref.attr not in attrs:
                    at = len(attrs)
                    attrs.append(ref.attr)
                    lines += [
                        f"v = item.get({ref.attr!r})",
                        f"t{at} = v.get('S') if v.__class__ is dict else None",
                        f"if t{at}.__class__ is not str:",
                        f"    t{at} = _key_text(RULE, {ref.attr!r}, v)",
                    ]
                at = attrs.index(ref.attr)
                if ref not in refs:
                    r = f"r{len(refs)}"
                    refs.append(ref)
                    if ref.group is not None:
                        if at not in matched:
                            matched.add(at)
                            lines.append(f"m{at} = PATTERNS[{ref.attr!r}].fullmatch(t{at})")
                        lines += [
                            f"{r} = m{at}[{ref.group!r}] if m{at} is not None else None",
                            f"if {r} is None:",
                            f"    _no_capture(RULE, {ref.attr!r}, t{at}, {ref.group!r})",
                        ]
                    elif ref.index is not None:
                        if at not in split:
                            split.add(at)
                            lines.append(f"p{at} = t{at}.split(SEP)")
                        lines += [
                            f"if len(p{at}) <= {ref.index}:",
                            f"    _no_part(RULE, {ref.attr!r}, t{at}, {ref.index}, SEP)",
                            f"{r} = SEP.join(p{at}[{ref.index}:])" if ref.rest else f"{r} = p{at}[{ref.index}]",
                        ]
                    else:
                        lines.append(f"{r} = t{at}")
                terms.append(f"r{refs.index(ref)}")
            ids.append(terms)
        values = [f"r{i}" for i in range(len(refs))]
        # Ids are ASCII without NUL when their pieces are (the common case, tested on the values only);
        # otherwise every id is checked by the text rule, which names what is wrong.
        clean = all(lit.isascii() and "\x00" not in lit for lit in literals)
        fast = " and ".join(f"{v}.isascii() and '\\x00' not in {v}" for v in values) if clean else "False"
        self.names = [f"i{i}" for i in range(len(ids))]
        lines += [f"{name} = {_concat(terms)}" for name, terms in zip(self.names, ids, strict=True)]
        lines += [f"if not ({fast}):", f"    _check_ids(RULE, ({', '.join(self.names)},))"]
        self.lines = lines
        self.namespace: dict[str, Any] = {
            "RULE": rule,
            "SEP": separator,
            "PATTERNS": patterns,
            "_key_text": _key_text,
            "_no_part": _no_part,
            "_no_capture": _no_capture,
            "_check_ids": _check_ids,
        }
        self.source = "\n".join(["def render(item):", *_indent(lines), f"    return ({', '.join(self.names)},)"])
        namespace = dict(self.namespace)
        exec(compile(self.source, f"<id templates of rule {rule!r}>", "exec"), namespace)
        self.render: Callable[[Item], tuple[str, ...]] = namespace["render"]


def _concat(terms: list[str]) -> str:
    """An expression joining `terms` (string literals' reprs, and names of variables holding strings) in one
    step: adjacent literals and f-strings, which Python compiles to one join."""
    if len(terms) == 1:
        return terms[0]
    return " ".join(term if term[0] in "'\"" else f"f'{{{term}}}'" for term in terms)


def _indent(lines: list[str], depth: int = 1) -> list[str]:
    return [" " * (4 * depth) + line for line in lines]


def _template_pieces(template: str) -> list[tuple[str, TemplateRef | None]]:
    """(literal text before, reference) of each reference of a template, then (the tail, None)."""
    out: list[tuple[str, TemplateRef | None]] = []
    refs = iter(template_refs(template))
    pos = 0
    while True:
        start = template.find("{", pos)
        if start < 0:
            out.append((template[pos:], None))
            return out
        out.append((template[pos:start], next(refs)))
        pos = template.index("}", start) + 1


def _no_part(rule: str, attr: str, text: str, index: int, separator: str) -> None:
    raise UnmappableItem(rule, f"attribute {attr!r} = {text!r} has no part {index} when split on {separator!r}")


def _no_capture(rule: str, attr: str, text: str, group: str) -> None:
    raise UnmappableItem(
        rule,
        f"capture {group!r} of attribute {attr!r} = {show(text)} is not set (the attribute does not match its "
        "`regex` test, or the group took no part in the match)",
    )


def _check_ids(rule: str, ids: tuple[str, ...]) -> None:
    for element_id in ids:
        try:
            check_text(element_id, "id")
        except UnsupportedValue as exc:
            raise UnmappableItem(rule, str(exc)) from None


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


_UNSEEN: Any = object()  # an attribute name the rule has not met yet (see `_CompiledRule.properties`)
_NAMES_MAX = 10_000  # attribute names remembered per rule; a table with more distinct names checks the rest each time


class _CompiledRule:
    """One rule, prepared once: its tests as one function of the item, its id templates compiled (`_Ids`), and
    a table of the attribute names it has met (checked by the name rule, renamed, or skipped)."""

    def __init__(self, rule: MappingRule, key: set[str]) -> None:
        self.rule = rule
        self.name = rule.name
        self.key_only_tests = all(attr in key for attr in rule.when)
        sep = rule.separator
        patterns = {attr: re.compile(cond.regex) for attr, cond in rule.when.items() if cond.regex is not None}
        if rule.vertex is not None:
            self.vertex = True
            self.label = rule.vertex.label
            self.ids = _Ids(rule.name, [rule.vertex.id], sep, patterns)
        else:
            assert rule.edge is not None
            self.vertex = False
            self.label = rule.edge.type
            self.ids = _Ids(rule.name, [rule.edge.id, rule.edge.from_, rule.edge.to], sep, patterns)
        self.skip = set(key) | set(rule.exclude) if rule.properties == "*" else set(rule.exclude)
        self.keep = None if rule.properties == "*" else list(rule.properties)
        self.rename = dict(rule.rename)
        self.required = list(rule.required)
        self.tests = [(attr, _test(cond)) for attr, cond in rule.when.items()]
        self.test_item = _item_test(self.tests)
        refs = [ref.attr for template in rule.templates.values() for ref in template_refs(template)]
        self.key_ids = all(attr in key for attr in refs)  # the element's id(s) come from the key alone
        # Set by ItemMapper: this rule and every rule before it test only key attributes, and its ids come from
        # the key; then an older image of the same item matches this rule too and maps to the same element.
        self.same_element_for_same_key = False
        # attribute name -> property name (None: never a property); filled as names are met, the skipped first
        self.names: dict[str, str | None] = dict.fromkeys(self.skip)
        self._generate()

    def matches(self, item: Item, known: Callable[[str], bool] | None = None) -> bool:
        """Every test holds; tests on attributes `known` says the image lacks pass (a keys-only REMOVE)."""
        if known is None:
            return self.test_item(item)
        for attr, test in self.tests:
            if known(attr) and not test(item.get(attr)):
                return False
        return True

    def element(self, item: Item, with_properties: bool) -> Element:
        if self.required:
            self._check_required(item)
        props = self.properties(item) if with_properties else None
        if self.vertex:
            (vertex_id,) = self.ids.render(item)
            return Element(self.name, True, vertex_id, self.label, properties=props)
        edge_id, from_id, to_id = self.ids.render(item)
        return Element(self.name, False, edge_id, self.label, from_id, to_id, props)

    def _check_required(self, item: Item) -> None:
        missing = [a for a in self.required if a not in item]
        if missing:
            raise UnmappableItem(self.name, f"required attribute(s) {', '.join(map(repr, missing))} missing")

    def _generate(self) -> None:
        """`properties(item)` and `addition(item, position, commit_ms, partition)` as Python source, generated
        once (see `_rule_code`)."""
        source = _rule_code(self)
        namespace: dict[str, Any] = {
            **self.ids.namespace,
            "NAMES": self.names,
            "UNSEEN": _UNSEEN,
            "MISSING": _UNSEEN,
            "KEEP": tuple(self.keep or ()),
            "LABEL": self.label,
            "KIND": WHOLE_VERTEX if self.vertex else WHOLE_EDGE,
            "GraphChange": GraphChange,
            "ABSENT": ABSENT,
            "_name": self._name,
            "_check_required": self._check_required,
            "_number": _number,
            "_value": _value,
        }
        exec(compile(source, f"<rule {self.name!r}>", "exec"), namespace)
        self.source = source
        self.properties: Callable[[Item], dict[str, Any]] = namespace["properties"]
        self.addition: Callable[[Item, Position, int, str], GraphChange] = namespace["addition"]

    def _name(self, attr: str) -> str | None:
        """The property name of an attribute met for the first time (None: never a property), remembered."""
        if attr in self.skip:
            name = None
        else:
            try:
                check_name(attr, "attribute name")
            except InvalidName as exc:
                raise UnmappableItem(self.name, f"attribute {show(attr)}: {exc}") from None
            name = self.rename.get(attr, attr)
        if len(self.names) < _NAMES_MAX:
            self.names[attr] = name
        return name


def _rule_code(rule: _CompiledRule) -> str:
    """A rule's `properties(item)` and `addition(item, position, commit_ms, partition)` as Python source.

    `properties` maps the item's attributes (every one but the key's with `properties = "*"`, else the listed
    ones present) by the name rule (each name checked once and remembered in `NAMES`: skipped, renamed or kept)
    and the value rule, with the common values converted inline: an ASCII string without NUL, an integer of at
    most 18 digits, a fraction without exponent that `repr` of its float gives back as it is (so that float is
    what the number rule gives: it is not whole and prints back as the same decimal), a boolean, a NULL (no
    property); every other number goes to `dynamodb_number`, every other value to `from_dynamodb` (`_number`,
    `_value`), which give the same as `from_dynamodb` would for the inline ones.
    `addition` is the whole-element ADD: the required attributes checked, the properties (inline), then the
    ids (`_Ids.lines`), in the order `element` has them, so an item with several faults fails on the same one.
    """
    loop = (
        ["for attr, value in item.items():"]
        if rule.keep is None
        else [
            "for attr in KEEP:",
            "    value = item.get(attr, MISSING)",
            "    if value is MISSING:",
            "        continue",
        ]
    )
    props = [
        "out = {}",
        *loop,
        "    name = NAMES.get(attr, UNSEEN)",
        "    if name is None:",
        "        continue",
        "    if name is UNSEEN:",
        "        name = _name(attr)",
        "        if name is None:",
        "            continue",
        "    if value.__class__ is dict and len(value) == 1:",
        "        raw = value.get('S')",
        "        if raw is not None:",
        "            if raw.__class__ is str and raw.isascii() and '\\x00' not in raw:",
        "                out[name] = raw",
        "                continue",
        "        else:",
        "            raw = value.get('N')",
        "            if raw is not None:",
        "                if raw.__class__ is str and len(raw) <= 18 and raw.isascii():",
        "                    # up to 18 digits: within 64 bits, and `int` gives what the full rule gives",
        "                    if raw.isdigit() or (raw[1:].isdigit() and raw[0] == '-'):",
        "                        out[name] = int(raw)",
        "                        continue",
        "                    # a fraction without exponent that a float prints back as it is: that float",
        "                    if '.' in raw and 'e' not in raw:",
        "                        try:",
        "                            number = float(raw)",
        "                        except ValueError:",
        "                            pass",
        "                        else:",
        "                            if repr(number) == raw and raw[-2:] != '.0':",
        "                                out[name] = number",
        "                                continue",
        "                out[name] = _number(RULE, attr, raw)",
        "                continue",
        "            raw = value.get('BOOL')",
        "            if raw.__class__ is bool:",
        "                out[name] = raw",
        "                continue",
        "            if 'NULL' in value:  # no property",
        "                continue",
        "    value = _value(RULE, attr, value)",
        "    if value is not ABSENT:",
        "        out[name] = value",
    ]
    required = []
    if rule.required:
        missing = " or ".join(f"{attr!r} not in item" for attr in rule.required)
        required = [f"if {missing}:", "    _check_required(item)"]
    ids = rule.ids.names
    ends = f"{ids[1]}, {ids[2]}" if len(ids) == 3 else "None, None"
    lines = [
        "def properties(item):",
        *_indent(props),
        "    return out",
        "",
        "def addition(item, position, commit_ms, partition):",
        *_indent(required),
        *_indent(props),
        *_indent(rule.ids.lines),
        f"    return GraphChange(KIND, True, {ids[0]}, LABEL, out, {ends}, position, commit_ms, partition)",
    ]
    return "\n".join(lines)


def _number(rule: str, attr: str, raw: Any) -> int | float | str:
    """An N value by the number rule (`dynamodb_number`), or `UnmappableItem` naming the attribute."""
    try:
        return dynamodb_number(raw)
    except UnsupportedValue as exc:
        raise UnmappableItem(rule, f"attribute {show(attr)}: {exc}") from None


def _value(rule: str, attr: str, value: Any) -> Any:
    """Any attribute value by the value rule (`from_dynamodb`), or `UnmappableItem` naming the attribute."""
    try:
        return from_dynamodb(value)
    except UnsupportedValue as exc:
        raise UnmappableItem(rule, f"attribute {show(attr)}: {exc}") from None


def _matcher(rules: list[_CompiledRule]) -> Callable[[Item], _CompiledRule | None]:
    """The first rule whose tests all hold, as one function generated once: each tested attribute's string is
    read once, `begins_with` and string `equals` tests are inline, other tests call their function (`_test`)."""
    namespace = {f"R{r}": rule for r, rule in enumerate(rules)}
    return _first_rule(rules, "match(item)", lambda r, rule: [f"return R{r}"], namespace)


def _adder(rules: list[_CompiledRule]) -> Callable[..., GraphChange | None]:
    """`ItemMapper.addition` generated once: the record's shape checked as `changes` checks it, then the
    whole-element ADD of the first rule that maps the new image (its generated `addition`); None for any other
    record, and when the rule is not `same_element_for_same_key` and there is an older image to compare with."""
    namespace: dict[str, Any] = {f"A{r}": rule.addition for r, rule in enumerate(rules)}
    namespace["INT64_MAX"] = INT64_MAX
    prelude = (
        "if (",
        "    event == 'REMOVE'",
        "    or item.__class__ is not dict",
        "    or keys.__class__ is not dict",
        "    or commit_ms.__class__ is not int",
        "    or not 0 <= commit_ms <= INT64_MAX",
        "):",
        "    return None",
        "if old is not None:",
        "    if old.__class__ is not dict:",
        "        return None",
        "    try:",
        "        if old == item:",
        "            return None",
        "    except RecursionError:  # nested deeper than Python compares: `changes` says what it makes",
        "        return None",
    )

    def action(r: int, rule: _CompiledRule) -> list[str]:
        add = f"A{r}(item, position, commit_ms, partition)"
        return [f"return {add}"] if rule.same_element_for_same_key else [f"return {add} if old is None else None"]

    signature = "addition(event, keys, item, old, position, partition, commit_ms)"
    return _first_rule(rules, signature, action, namespace, prelude)


def _first_rule(
    rules: list[_CompiledRule],
    signature: str,
    action: Callable[[int, _CompiledRule], list[str]],
    namespace: dict[str, Any],
    prelude: tuple[str, ...] = (),
) -> Any:
    """A function generated once that runs `prelude`, then `action`'s lines for the first rule whose tests hold
    on `item`, and returns None if none does; see `_matcher`."""
    lines = [f"def {signature}:", *_indent(list(prelude))]
    strings: dict[str, str] = {}  # attribute -> the variable holding its S value (None if it has none)
    for r, rule in enumerate(rules):
        terms = []
        for t, (attr, cond) in enumerate(rule.rule.when.items()):
            inline = cond.exists is None and cond.regex is None
            starts = inline and cond.equals is None and cond.begins_with is not None
            if not starts and not (inline and cond.begins_with is None and isinstance(cond.equals, str)):
                namespace[f"T{r}_{t}"] = rule.tests[t][1]
                terms.append(f"T{r}_{t}(item.get({attr!r}))")
                continue
            if attr not in strings:
                strings[attr] = f"s{len(strings)}"
                lines += [
                    f"    v = item.get({attr!r})",
                    f"    {strings[attr]} = v.get('S') if v.__class__ is dict else None",
                ]
            text = strings[attr]
            if starts:
                terms.append(f"{text}.__class__ is str and {text}.startswith({cond.begins_with!r})")
            else:
                terms.append(f"{text} == {cond.equals!r}")
        lines += [f"    if {' and '.join(terms) or 'True'}:", *_indent(action(r, rule), 2)]
    lines.append("    return None")
    exec(compile("\n".join(lines), "<mapping rules>", "exec"), namespace)
    return namespace[signature.partition("(")[0]]


def _item_test(tests: list[tuple[str, Callable[[Any], bool]]]) -> Callable[[Item], bool]:
    """A rule's tests as one function of the item (the common counts of tests without a loop)."""
    if not tests:
        return lambda item: True
    if len(tests) == 1:
        ((a1, t1),) = tests
        return lambda item: t1(item.get(a1))
    if len(tests) == 2:
        (a1, t1), (a2, t2) = tests
        return lambda item: t1(item.get(a1)) and t2(item.get(a2))

    def every(item: Item) -> bool:
        for attr, test in tests:
            if not test(item.get(attr)):
                return False
        return True

    return every


def _test(cond: Any) -> Callable[[dict[str, Any] | None], bool]:
    exists, prefix, expected, regex = cond.exists, cond.begins_with, cond.equals, cond.regex
    if exists is None and expected is None and regex is None and prefix is not None:  # the common test, specialised

        def begins_with(value: dict[str, Any] | None) -> bool:
            if value.__class__ is not dict:
                return False
            text = value.get("S")
            return text.__class__ is str and text.startswith(prefix)

        return begins_with
    if exists is None and prefix is None and regex is None and isinstance(expected, str):

        def equals_string(value: dict[str, Any] | None) -> bool:
            return value.__class__ is dict and value.get("S") == expected

        return equals_string
    fullmatch = re.compile(regex).fullmatch if regex is not None else None

    def test(value: dict[str, Any] | None) -> bool:
        if exists is not None and (value is not None) != exists:
            return False
        if prefix is not None or fullmatch is not None:
            text = value.get("S") if value.__class__ is dict else None
            if text.__class__ is not str:
                return False
            if prefix is not None and not text.startswith(prefix):
                return False
            if fullmatch is not None and fullmatch(text) is None:
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
        self._match = _matcher(self.rules)
        # `addition(event, keys, new, old, position, partition, commit_ms)`: the one change of the common record,
        # in one call with positional arguments: an INSERT or MODIFY whose new image a rule maps, with no older
        # image or one that cannot map to another element. None for any other record (a REMOVE, equal images, no
        # rule, a rule whose element may differ between the images, a record of another shape, an unknown
        # `commit_ms`): `changes` then says what it makes. Whenever it gives a change, or raises, `changes` gives
        # that same change, or raises the same (tests/test_mapping_generated.py).
        self.addition: Callable[[str, Item, Item | None, Item | None, Position, str, int], GraphChange | None] = _adder(
            self.rules
        )
        self.vertex_removes = cfg.vertex_removes
        self.ttl_deletes = cfg.ttl_deletes
        self.ttl_mark_property = cfg.ttl_mark_property

    def match(self, item: Item, keys_only: bool = False) -> _CompiledRule | None:
        if not keys_only:
            return self._match(item)
        known = self.key.__contains__
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
            return Outcome([self._removal(before, position, commit_ms, partition)])

        if new is None:  # a keys-only record whose item is gone now: its REMOVE record follows
            return Outcome([], "item_gone")
        try:
            unchanged = old is not None and old == new
        except RecursionError:  # nested deeper than Python compares; the value rule refuses it below
            unchanged = False
        if unchanged:
            return Outcome([], "unchanged")
        rule = self.match(new)
        if rule is not None and (old is None or rule.same_element_for_same_key):
            # the common case: no older element to compare with (see `same_element_for_same_key`)
            return Outcome([rule.addition(new, position, commit_ms, partition)])
        after = rule.element(new, True) if rule is not None else None
        before = self.element(old, with_properties=False) if old is not None else None
        out: list[GraphChange] = []
        if before is not None and (after is None or not before.same_element(after)):
            out.append(self._removal(before, position, commit_ms, partition))
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

    def _removal(self, el: Element, position: Position, commit_ms: int, partition: str) -> GraphChange:
        if not el.vertex:
            kind = WHOLE_EDGE
        elif self.vertex_removes == "detach":
            kind = VERTEX_LABEL
        else:
            kind = WHOLE_VERTEX
        return GraphChange(kind, False, el.id, el.name, None, el.from_id, el.to_id, position, commit_ms, partition)
