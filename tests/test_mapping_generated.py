"""The mapper's generated code (`daemon.mapping`: each rule's `properties` / `addition`, and the mapper's one-call
`addition` that the `dynamodb` source tries first) against the general path, on generated items and records.

The reference here is the plain reading of the rules: every attribute (or the listed ones) by the name rule
(`check_name`), renamed, through the value rule (`daemon.values.from_dynamodb`), then the ids by the rule's
templates (`_Ids.render`). The generated code must give the same properties in the same order with the same
types, and fail on the same items with the same reasons; `ItemMapper.addition` must give exactly what
`ItemMapper.changes` gives whenever it gives anything, and raise what it raises."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from daemon.config import MappingRule, load_config
from daemon.mapping import ItemMapper, UnmappableItem, _CompiledRule
from daemon.names import InvalidName, check_name
from daemon.values import ABSENT, UnsupportedValue, from_dynamodb, show
from tests.test_mapping import attribute_values

SHIPPED = Path(__file__).parent.parent / "config" / "dynamodb-social.toml"
CFG = load_config(SHIPPED).sources[0]
# the shipped rules, plus one that keeps a list of properties (with a rename and a required attribute)
LISTED = MappingRule.model_validate(
    {
        "name": "listed",
        "when": {"PK": {"begins_with": "ITEM#"}},
        "vertex": {"label": "Item", "id": "item:{PK[1:]}"},
        "properties": ["name", "age", "score", "odd key", "n\u00e9"],
        "rename": {"age": "years"},
        "required": ["name"],
    }
)
MAPPER = ItemMapper(CFG.model_copy(update={"rules": [*CFG.rules, LISTED]}))

# numbers around every inline fast path's edges: digit counts near 18 and 19, signs, fractions that a float
# prints back and ones it does not, trailing zeros, exponents, junk the float parser reads but DynamoDB does not
edge_numbers = st.one_of(
    st.from_regex(r"-?[0-9]{1,20}", fullmatch=True),
    st.from_regex(r"[-+]?[0-9]{0,17}\.[0-9]{0,17}", fullmatch=True),
    st.from_regex(r"-?[0-9]{1,4}(\.[0-9]{1,4})?[eE][-+]?[0-9]{1,3}", fullmatch=True),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["-0.0", "0.0", "1.0", "1.50", " 1.5", "1_0.5", "\u0661.5", "inf", "nan", "-", "", ".5", "5."]),
)
values = st.one_of(
    attribute_values,
    edge_numbers.map(lambda n: {"N": n}),
    st.sampled_from([{"S": None}, {"N": 5}, {"BOOL": "true"}, {"S": "a", "N": "1"}, {}, None, "S", ["S"]]),
    st.text(max_size=6).map(lambda s: {"S": s}),
)
names = st.one_of(
    st.sampled_from(["name", "age", "score", "odd key", "n\u00e9", "PK", "SK", "active", "x\ud800", ""]),
    st.text(max_size=6),
)
keys = st.one_of(
    st.sampled_from(["USER#a", "POST#p", "ITEM#i#j", "CONFIG#1", "USER#", "USER#\x00", "USER#\u00e9"]).map(
        lambda s: {"S": s}
    ),
    st.sampled_from([{"N": "1"}, {"BOOL": True}, {"S": 5}]),
)
sort_keys = st.sampled_from(["PROFILE", "POST", "FOLLOWS#b", "LIKES#p", "FOLLOWS#", "X"]).map(lambda s: {"S": s})


@st.composite
def items(draw: Any) -> dict[str, Any]:
    item = {"PK": draw(keys), "SK": draw(sort_keys)}
    for name, value in draw(st.lists(st.tuples(names, values), max_size=6)):
        item[name] = value
    return item


def reference_properties(rule: _CompiledRule, item: dict[str, Any]) -> dict[str, Any]:
    """The rule's properties of `item` by the plain reading of the rules."""
    out: dict[str, Any] = {}
    for attr in item if rule.keep is None else [a for a in rule.keep if a in item]:
        if attr in rule.skip:
            continue
        try:
            check_name(attr, "attribute name")
        except InvalidName as exc:
            raise UnmappableItem(rule.name, f"attribute {show(attr)}: {exc}") from None
        try:
            value = from_dynamodb(item[attr])
        except UnsupportedValue as exc:
            raise UnmappableItem(rule.name, f"attribute {show(attr)}: {exc}") from None
        if value is not ABSENT:
            out[rule.rename.get(attr, attr)] = value
    return out


def outcome(action: Any) -> Any:
    """What `action()` gives, comparable with types (1 == 1.0 == True otherwise), or the reason it refused."""
    try:
        got = action()
    except UnmappableItem as exc:
        return ("refused", exc.reason)
    return ("gave", typed(got))


def typed(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, typed(v)) for k, v in value.items()]
    if isinstance(value, tuple | list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


@settings(max_examples=500, deadline=None)
@given(items())
@example({"PK": {"S": "USER#a"}, "SK": {"S": "PROFILE"}, "score": {"N": "810.572"}, "age": {"N": "-5"}})
@example({"PK": {"S": "USER#a"}, "SK": {"S": "PROFILE"}, "big": {"N": "1.5e+16"}, "w": {"N": "10.0"}})
@example({"PK": {"S": "USER#a"}, "SK": {"S": "PROFILE"}, "s": {"S": "a\x00"}, "t": {"N": "x"}})
@example({"PK": {"S": "ITEM#i"}, "SK": {"S": "X"}, "age": {"N": "0.1"}, "name": {"S": "\u00e9"}})
def test_generated_properties_and_additions_equal_the_general_path(item: dict[str, Any]) -> None:
    for rule in MAPPER.rules:
        assert outcome(lambda rule=rule: rule.properties(item)) == outcome(
            lambda rule=rule: reference_properties(rule, item)
        )

        def general(rule: _CompiledRule = rule) -> Any:
            if rule.required:
                rule._check_required(item)
            props = reference_properties(rule, item)
            ids = rule.ids.render(item)
            return (ids[0], props, *ids[1:])

        def generated(rule: _CompiledRule = rule) -> Any:
            change = rule.addition(item, ("1",), 7, "s")
            ends = () if change.from_id is None else (change.from_id, change.to_id)
            assert (change.kind, change.key, change.position, change.commit_ms) == (
                "vr" if rule.vertex else "er",
                rule.label,
                ("1",),
                7,
            )
            return (change.id, change.value, *ends)

        assert outcome(generated) == outcome(general)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["INSERT", "MODIFY", "REMOVE", None]),
    items(),
    st.one_of(st.none(), items()),
    st.sampled_from([0, 1704067260000, -1, 2**63, 1.5]),
)
def test_the_one_call_addition_gives_what_changes_gives(event: Any, new: dict, old: Any, commit_ms: Any) -> None:
    if old is not None:
        old = {**old, "PK": new["PK"], "SK": new["SK"]}  # (a record's images share the key)
    keys = {"PK": new["PK"], "SK": new["SK"]}
    args = (event, keys, new, old, ("1",), "s", commit_ms)
    fast = outcome(lambda: MAPPER.addition(*args))
    if fast == ("gave", typed(None)):
        return  # `changes` takes such a record
    slow = outcome(
        lambda: MAPPER.changes(event, keys=keys, new=new, old=old, position=("1",), partition="s", commit_ms=commit_ms)
    )
    if fast[0] == "refused":
        assert slow == fast
        return
    change = MAPPER.addition(*args)
    (want,) = MAPPER.changes(
        event, keys=keys, new=new, old=old, position=("1",), partition="s", commit_ms=commit_ms
    ).changes
    assert change == want and typed(change.value) == typed(want.value)


def test_the_number_fast_paths_give_the_number_rule() -> None:
    from daemon.values import dynamodb_number

    rule = MAPPER.rules[0]
    for text in ["810.572", "-810.572", "0.1", "0.30000000000000004", "123456789012345.6", "-5", "-05", "10.0"]:
        (value,) = rule.properties({"n": {"N": text}}).values()
        want = dynamodb_number(text)
        assert (type(value), value) == (type(want), want), text
    assert Decimal(str(rule.properties({"n": {"N": "0.1"}})["n"])) == Decimal("0.1")
