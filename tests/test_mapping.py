"""DynamoDB items -> changes (`daemon.mapping`) and the DynamoDB value rule (`daemon.values.from_dynamodb`):
rule matching, whole images, rule changes, removes, TTL, unmappable items, config errors, and every attribute
type by a property-based test against an independent reading of the rule (`tests.stand.dynamodb_workload`)."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from daemon.config import ConfigError, load_config, parse_config
from daemon.mapping import ItemMapper, UnmappableItem
from daemon.values import ABSENT, UnsupportedValue, from_dynamodb
from tests.stand.dynamodb_workload import expected_value

SHIPPED = Path(__file__).parent.parent / "config" / "dynamodb-social.toml"


def mapper(**overrides: object) -> ItemMapper:
    cfg = load_config(SHIPPED).sources[0]
    return ItemMapper(cfg.model_copy(update=overrides))


def user(handle: str, **attrs: dict) -> dict:
    return {"PK": {"S": f"USER#{handle}"}, "SK": {"S": "PROFILE"}, **attrs}


def changes(m: ItemMapper, event: str, new: dict | None = None, old: dict | None = None, **kw: object):
    keys = {k: (new or old)[k] for k in ("PK", "SK")}
    return m.changes(event, keys=keys, new=new, old=old, position=("1",), partition="s", commit_ms=0, **kw)


def test_insert_becomes_a_whole_vertex_with_renamed_properties() -> None:
    out = changes(mapper(), "INSERT", user("ada", name={"S": "Ada"}, age={"N": "36"}, gone={"NULL": True}))
    (change,) = out.changes
    assert (change.kind, change.add, change.id, change.key) == ("vr", True, "user:ada", "User")
    assert change.value == {"displayName": "Ada", "age": 36}


def test_edge_items_name_their_endpoints() -> None:
    item = {"PK": {"S": "USER#ada"}, "SK": {"S": "FOLLOWS#bob"}, "since": {"N": "2020"}}
    (change,) = changes(mapper(), "INSERT", item).changes
    assert (change.kind, change.id, change.key, change.from_id, change.to_id) == (
        "er",
        "follows:ada:bob",
        "FOLLOWS",
        "user:ada",
        "user:bob",
    )
    assert change.value == {"since": 2020}


def test_unchanged_modify_and_unmatched_items_are_skipped() -> None:
    m = mapper()
    item = user("ada", name={"S": "Ada"})
    assert changes(m, "MODIFY", item, item).skipped == "unchanged"
    other = {"PK": {"S": "CONFIG#1"}, "SK": {"S": "X"}}
    assert changes(m, "INSERT", other).skipped == "no_rule"
    assert changes(m, "REMOVE", None, other).skipped == "no_rule"


def test_an_item_that_changes_rule_removes_the_old_element() -> None:
    m = mapper()
    old = user("ada", name={"S": "Ada"})
    new = {"PK": {"S": "USER#ada"}, "SK": {"S": "PROFILE2"}}  # (keys never change; the rule's test does)
    out = changes(m, "MODIFY", new, old)
    assert [(c.kind, c.add, c.id) for c in out.changes] == [("vr", False, "user:ada")]


def test_a_rule_on_non_key_attributes_before_a_key_only_rule_still_removes_the_old_element() -> None:
    from daemon.config import MappingRule

    admin = MappingRule.model_validate(
        {"name": "admin", "when": {"role": {"equals": "admin"}}, "vertex": {"label": "Admin", "id": "a:{PK}"}}
    )
    shipped = load_config(SHIPPED).sources[0].rules
    m = mapper(rules=[admin, *shipped])
    old = user("ada", role={"S": "admin"})
    new = user("ada", role={"S": "member"})
    out = changes(m, "MODIFY", new, old)
    assert [(c.kind, c.add, c.id) for c in out.changes] == [("vr", False, "a:USER#ada"), ("vr", True, "user:ada")]
    # With only key-tested rules whose ids come from the key, the old image is not mapped at all: same element.
    plain = mapper()
    assert all(rule.same_element_for_same_key for rule in plain.rules)
    assert not any(rule.same_element_for_same_key for rule in m.rules[:2])
    (change,) = changes(plain, "MODIFY", new, old).changes
    assert (change.kind, change.add, change.value) == ("vr", True, {"role": "member"})


def test_remove_policies_and_ttl() -> None:
    item = user("ada", name={"S": "Ada"})
    assert [(c.kind, c.add) for c in changes(mapper(), "REMOVE", None, item).changes] == [("vr", False)]
    assert [(c.kind, c.add) for c in changes(mapper(vertex_removes="detach"), "REMOVE", None, item).changes] == [
        ("vl", False)
    ]
    marked = changes(mapper(ttl_deletes="mark"), "REMOVE", None, item, ttl=True).changes
    assert [(c.kind, c.add, c.key) for c in marked] == [("vp", True, "expired_at")]
    assert changes(mapper(ttl_deletes="mark"), "REMOVE", None, item, ttl=False).changes[0].kind == "vr"


def test_keys_only_remove_matches_rules_on_key_attributes() -> None:
    m = mapper()
    keys = {"PK": {"S": "USER#ada"}, "SK": {"S": "FOLLOWS#bob"}}
    out = m.changes("REMOVE", keys=keys, new=None, old=None, position=("1",), partition="s", commit_ms=0)
    assert [(c.kind, c.add, c.id, c.from_id, c.to_id) for c in out.changes] == [
        ("er", False, "follows:ada:bob", "user:ada", "user:bob")
    ]


def test_an_item_that_matches_but_cannot_be_mapped_raises_with_the_rule() -> None:
    text = SHIPPED.read_text().replace(
        'vertex = { label = "Post", id = "post:{PK[1]}" }',
        'vertex = { label = "Post", id = "post:{PK[1]}:{author}" }\nrequired = ["author"]',
    )
    cfg = parse_config(text).sources[0]
    m = ItemMapper(cfg)
    post = {"PK": {"S": "POST#p1"}, "SK": {"S": "POST"}}
    with pytest.raises(UnmappableItem, match=r"rule 'post'.*'author'.*missing"):
        changes(m, "INSERT", post)
    with pytest.raises(UnmappableItem, match=r"'author' is M, not a string or number"):
        changes(m, "INSERT", {**post, "author": {"M": {}}})
    bad_part = {"PK": {"S": "USER"}, "SK": {"S": "PROFILE"}}
    assert changes(m, "INSERT", bad_part).skipped == "no_rule"  # PK does not begin with "USER#"


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ('vertex = { label = "U", id = "u:{handle}" }', "names attribute 'handle', which this rule does not"),
        ("", "give exactly one of `vertex"),
        ('vertex = { id = "u:{PK}" }', "label: required"),
        ('vertex = { label = "U", id = "u:{PK" }', "malformed template"),
        ('vertex = { label = "U", id = "constant" }', "names no attribute"),
        ('when = { a = {} }\nvertex = { label = "U", id = "{PK}" }', "give equals, begins_with or exists"),
        (
            'edge = { type = "T", id = "{PK}", from = "{PK}", to = "{other}" }',
            "edge.to: template names attribute 'other'",
        ),
    ],
)
def test_a_broken_rule_fails_at_start_with_the_rule_and_the_reason(rule: str, reason: str) -> None:
    text = f"""
[[sources]]
name = "t"
kind = "dynamodb"
sink = "g"
table = "t"
key = ["PK", "SK"]
region = "us-east-1"

[[sources.rules]]
name = "broken"
{rule}

[sinks.g]
kind = "falkordb"
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    message = str(err.value)
    assert reason in message and "rules" in message, message


# -- every attribute type, by the documented rule -----------------------------------------------------

numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=6).map(str),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
).filter(lambda t: Decimal(t).adjusted() < 120)
binary = st.binary(max_size=16)
scalars = st.one_of(
    st.text().map(lambda s: {"S": s}),
    numbers.map(lambda n: {"N": n}),
    binary.map(lambda b: {"B": b}),
    st.booleans().map(lambda b: {"BOOL": b}),
    st.just({"NULL": True}),
)
attribute_values = st.recursive(
    st.one_of(
        scalars,
        st.lists(st.text(), min_size=1, max_size=4, unique=True).map(lambda v: {"SS": v}),
        st.lists(numbers, min_size=1, max_size=4, unique_by=Decimal).map(lambda v: {"NS": v}),
        st.lists(binary, min_size=1, max_size=4, unique=True).map(lambda v: {"BS": v}),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda v: {"L": v}),
        st.dictionaries(st.text(max_size=8), inner, max_size=4).map(lambda v: {"M": v}),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(attribute_values)
@example({"S": "a\x00b"})
@example({"M": {"k\x00": {"S": "v\x00"}}})
def test_every_attribute_type_follows_the_documented_rule(value: dict) -> None:
    if "S" in value and "\x00" in value["S"]:  # a NUL in a string property: refused (only JSON text escapes it)
        with pytest.raises(UnsupportedValue, match="NUL"):
            from_dynamodb(value)
        return
    got = from_dynamodb(value)
    want = expected_value(value)
    if want is None:
        assert got is ABSENT
        return
    tag = next(iter(value))
    if tag in ("SS", "NS", "BS", "L", "M"):  # JSON text: compared as data (1e-06 and 1e-6 are one number)
        assert isinstance(got, str) and json.loads(got) == json.loads(want)
    else:
        assert type(got) is type(want) and got == want
    if tag == "N":  # no precision lost: the replicated value reads back as the same number
        assert Decimal(str(got)) == Decimal(value["N"])
    if tag == "B":
        assert base64.b64decode(got) == value["B"]
