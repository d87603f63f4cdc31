"""Mapping rules for single-table keys whose ids contain the separator (issue 15, item 5): `regex` conditions
whose named groups are captures (`{ATTR~GROUP}`), the prefix strip `{ATTR[i:]}`, their validation at config
load, the template parser and the generated id renderer (`daemon.mapping._Ids`) against a plain reading of the
templates, the generated rule matcher and the inline value conversions against the generic path (each rule's
test functions, `from_dynamodb` and `check_name`), and one run of the real daemon from moto into the embedded
engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import ConfigError, TemplateRef, parse_config, template_refs
from daemon.mapping import ItemMapper, UnmappableItem, _Ids
from daemon.names import InvalidName, check_name
from daemon.values import ABSENT, UnsupportedValue, from_dynamodb
from tests.stand.dynamodb_daemon import replica, run_to_idle, social_config
from tests.stand.dynamodb_workload import TABLE, create_table
from tests.stand.moto_process import MotoProcess

FOLLOWS = """
[[sources.rules]]
name = "user"
when = { PK = { begins_with = "USER#" }, SK = { equals = "PROFILE" } }
vertex = { label = "User", id = "user:{PK[1:]}" }

[[sources.rules]]
name = "follows"
when = { PK = { regex = "USER#(?P<who>.+)" }, SK = { regex = "FOLLOWS#USER#(?P<whom>.+)#(?P<year>[0-9]{4})" } }
edge = { type = "FOLLOWS", id = "follows:{PK~who}:{SK~whom}:{SK~year}", from = "user:{PK~who}", to = "user:{SK~whom}" }
"""


def config_text(rules: str) -> str:
    return f"""
[[sources]]
name = "t"
kind = "dynamodb"
sink = "g"
table = "t"
key = ["PK", "SK"]
region = "us-east-1"
{rules}
[sinks.g]
kind = "falkordb"
"""


def changes(m: ItemMapper, item: dict) -> list:
    keys = {k: item[k] for k in ("PK", "SK")}
    return m.changes("INSERT", keys=keys, new=item, old=None, position=("1",), partition="s", commit_ms=0).changes


def test_captures_keep_ids_that_contain_the_separator() -> None:
    m = ItemMapper(parse_config(config_text(FOLLOWS)).sources[0])
    (user,) = changes(m, {"PK": {"S": "USER#ada#lovelace"}, "SK": {"S": "PROFILE"}, "age": {"N": "36"}})
    assert (user.kind, user.id, user.value) == ("vr", "user:ada#lovelace", {"age": 36})
    item = {"PK": {"S": "USER#bob"}, "SK": {"S": "FOLLOWS#USER#ada#lovelace#2024"}, "since": {"N": "2024"}}
    (edge,) = changes(m, item)
    assert (edge.kind, edge.id, edge.from_id, edge.to_id) == (
        "er",
        "follows:bob:ada#lovelace:2024",
        "user:bob",
        "user:ada#lovelace",
    )
    # an SK the regex does not match is not this rule's item
    other = {"PK": {"S": "USER#bob"}, "SK": {"S": "FOLLOWS#USER#ada"}}
    assert (
        m.changes("INSERT", keys=other, new=other, old=None, position=("1",), partition="s", commit_ms=0).skipped
        == "no_rule"
    )


def test_a_group_that_takes_no_part_makes_the_item_unmappable() -> None:
    rules = """
[[sources.rules]]
name = "opt"
when = { SK = { regex = "X(#(?P<tail>.+))?" } }
vertex = { label = "X", id = "x:{PK}:{SK~tail}" }
"""
    m = ItemMapper(parse_config(config_text(rules)).sources[0])
    assert changes(m, {"PK": {"S": "p"}, "SK": {"S": "X#t#u"}})[0].id == "x:p:t#u"
    with pytest.raises(UnmappableItem, match=r"rule 'opt': capture 'tail' of attribute 'SK' = 'X' is not set"):
        changes(m, {"PK": {"S": "p"}, "SK": {"S": "X"}})


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (
            'when = { SK = { regex = "F#(?P<who>.+)" } }\nvertex = { label = "U", id = "u:{SK~whom}" }',
            "rules[0] (name 'broken').vertex.id: template names capture 'whom' of attribute 'SK', which is not a "
            "capture of this rule: its `regex` test defines 'who'",
        ),
        (
            'vertex = { label = "U", id = "u:{SK~who}" }',
            "template names capture 'who' of attribute 'SK', which is not a capture of this rule: `when` gives it "
            "no `regex` test",
        ),
        (
            'when = { SK = { regex = "F#.+" } }\nvertex = { label = "U", id = "u:{SK~who}" }',
            "it has no `regex` test with named groups",
        ),
        (
            'when = { SK = { regex = "F#(?P<who>.+" } }\nvertex = { label = "U", id = "u:{PK}" }',
            "regular expression 'F#(?P<who>.+' does not compile: missing ), unterminated subpattern",
        ),
        ('vertex = { label = "U", id = "u:{SK[1:}" }', "malformed template"),
    ],
)
def test_a_capture_or_regex_that_cannot_work_fails_at_load_with_the_rule_and_the_name(rule: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config_text(f'[[sources.rules]]\nname = "broken"\n{rule}\n'))
    message = str(err.value)
    assert reason in message and "rules" in message, message


# -- the template parser and the generated renderer, against a plain reading ----------------------------------

names = st.text(st.characters(blacklist_characters="{}[]~", blacklist_categories=("Cs",)), min_size=1, max_size=6)
groups = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True)
literals = st.text(st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), max_size=5)
refs = st.one_of(
    st.builds(lambda a: TemplateRef(a), names),
    st.builds(lambda a, i: TemplateRef(a, i), names, st.integers(0, 3)),
    st.builds(lambda a, i: TemplateRef(a, i, True), names, st.integers(0, 3)),
    st.builds(lambda a, g: TemplateRef(a, group=g), names, groups),
)


def write(ref: TemplateRef) -> str:
    if ref.group is not None:
        return f"{{{ref.attr}~{ref.group}}}"
    if ref.index is not None:
        return f"{{{ref.attr}[{ref.index}{':' if ref.rest else ''}]}}"
    return f"{{{ref.attr}}}"


def plain_render(pieces: list[tuple[str, TemplateRef]], tail: str, item: dict, sep: str, regex: str) -> str:
    out = []
    for literal, ref in pieces:
        text = item[ref.attr]["S"]
        if ref.group is not None:
            text = re.fullmatch(regex, text)[ref.group]
        elif ref.index is not None:
            parts = text.split(sep)
            text = sep.join(parts[ref.index :]) if ref.rest else parts[ref.index]
        out.append(literal + text)
    return "".join(out) + tail


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.tuples(literals, refs), min_size=1, max_size=4), min_size=1, max_size=3),
    literals,
    st.sampled_from(["#", "::", "|"]),
    st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=4), min_size=4, max_size=6),
)
def test_templates_parse_back_and_render_as_written(
    templates: list[list[tuple[str, TemplateRef]]], tail: str, sep: str, parts: list[str]
) -> None:
    texts = ["".join(lit + write(ref) for lit, ref in pieces) + tail for pieces in templates]
    for text, pieces in zip(texts, templates, strict=True):
        assert template_refs(text) == [ref for _, ref in pieces]
    # every attribute holds the parts joined by the separator; a group captures everything after the first part
    value = sep.join(p.replace(sep, "") for p in parts)
    used = {ref.attr for pieces in templates for _, ref in pieces}
    item = {attr: {"S": value} for attr in used}
    pattern = f"(?s:.*?){re.escape(sep)}(?P<rest>.*)"
    regexes = {attr: re.compile(pattern) for attr in used}
    capture_names = {ref.group for pieces in templates for _, ref in pieces if ref.group is not None}
    if capture_names:
        # one regex per attribute, every capture name a group of it (all the same text here)
        pattern = "".join(f"(?P<{g}>" for g in sorted(capture_names)) + f"(?s:.*?){re.escape(sep)}.*"
        pattern += ")" * len(capture_names)
        regexes = {attr: re.compile(pattern) for attr in used}
    ids = _Ids("r", texts, sep, regexes)
    try:
        want = [plain_render(pieces, tail, item, sep, regexes[pieces[0][1].attr].pattern) for pieces in templates]
    except (IndexError, TypeError):
        with pytest.raises(UnmappableItem):
            ids.render(item)
        return
    if any("\x00" in text for text in want):
        with pytest.raises(UnmappableItem, match="NUL"):
            ids.render(item)
        return
    assert list(ids.render(item)) == want


# -- end to end: moto's stream -> the daemon -> the embedded engine ---------------------------------------------


def test_captured_ids_replicate_into_the_embedded_engine(moto: MotoProcess, tmp_path: Path) -> None:
    moto.reset()
    client = moto.client("dynamodb")
    create_table(client)
    config = social_config(tmp_path, moto)
    text = config.read_text()
    head, rest = text.split("[[sources.rules]]", 1)
    config.write_text(head + FOLLOWS.strip() + "\n\n[sinks.graph]" + rest.split("[sinks.graph]", 1)[1])
    items = [
        {"PK": {"S": "USER#ada#lovelace"}, "SK": {"S": "PROFILE"}, "age": {"N": "36"}},
        {"PK": {"S": "USER#bob"}, "SK": {"S": "PROFILE"}},
        {"PK": {"S": "USER#bob"}, "SK": {"S": "FOLLOWS#USER#ada#lovelace#2024"}, "since": {"N": "2024"}},
    ]
    for item in items:
        client.put_item(TableName=TABLE, Item=item)
    run_to_idle(config)
    graph = replica(tmp_path / "data")
    assert {v: graph.vertices[v].props for v in graph.vertices} == {"user:ada#lovelace": {"age": 36}, "user:bob": {}}
    assert {(i, e.from_id, e.to_id, e.type, e.props["since"]) for i, e in graph.edges.items()} == {
        ("follows:bob:ada#lovelace:2024", "user:bob", "user:ada#lovelace", "FOLLOWS", 2024)
    }
    assert not (tmp_path / "data" / "dead-letter.jsonl").exists()


# -- the generated matcher and the inline values, against the generic path ---------------------------------------

conditions = st.one_of(
    st.builds(lambda p: {"begins_with": p}, st.sampled_from(["A", "A#", "B"])),
    st.builds(lambda e: {"equals": e}, st.sampled_from(["A", "A#1", 1, 1.5, True])),
    st.builds(lambda e: {"exists": e}, st.booleans()),
    st.builds(lambda r: {"regex": r}, st.sampled_from(["A#(?P<x>.*)", "[AB].?"])),
    st.builds(lambda p, e: {"begins_with": p, "equals": e}, st.sampled_from(["A"]), st.sampled_from(["A#1", "B"])),
)
key_values = st.one_of(
    st.builds(lambda s: {"S": s}, st.sampled_from(["A", "A#1", "A#", "B#2", "B", "", "a"])),
    st.builds(lambda n: {"N": n}, st.sampled_from(["1", "1.5", "1.50", "x"])),
    st.builds(lambda b: {"BOOL": b}, st.booleans()),
    st.sampled_from([None, "A", ["A"], {}, {"S": 1}, {"S": "A", "N": "1"}]),
)
plain_values = st.one_of(
    st.builds(lambda s: {"S": s}, st.text(max_size=4)),
    st.builds(lambda n: {"N": n}, st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{0,17})?", fullmatch=True)),
    st.builds(lambda b: {"BOOL": b}, st.one_of(st.booleans(), st.just("true"))),
    st.sampled_from([{"NULL": True}, {"S": None}, {"N": 5}, {"SS": ["b", "a"]}, {"S": "x", "N": "1"}, None, "x"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.dictionaries(st.sampled_from(["PK", "SK", "t"]), conditions, max_size=2), min_size=1, max_size=4),
    st.dictionaries(st.sampled_from(["PK", "SK", "t"]), key_values),
    st.dictionaries(st.sampled_from(["a", "b", "PK", "", "n\x00", "é"]), plain_values, max_size=4),
)
def test_generated_matcher_and_inline_values_equal_the_generic_path(
    whens: list[dict], keyish: dict, attrs: dict
) -> None:
    rules = "".join(
        f'[[sources.rules]]\nname = "r{i}"\nwhen = {toml_inline(when)}\nvertex = {{ label = "L", id = "v:{{PK}}" }}\n'
        f'rename = {{ a = "A" }}\n\n'
        for i, when in enumerate(whens)
    )
    m = ItemMapper(parse_config(config_text(rules)).sources[0])
    item = {**attrs, **keyish}
    generic = next((rule for rule in m.rules if all(t(item.get(a)) for a, t in rule.tests)), None)
    assert m.match(item) is generic
    if generic is None:
        return
    try:
        want: dict | type = {}
        for attr, value in item.items():
            if attr in generic.skip:
                continue
            check_name(attr, "attribute name")
            converted = from_dynamodb(value)
            if converted is not ABSENT:
                want[generic.rename.get(attr, attr)] = converted
    except (UnsupportedValue, InvalidName):
        want = UnmappableItem
    if want is UnmappableItem:
        with pytest.raises(UnmappableItem):
            generic.properties(item)
    else:
        got = generic.properties(item)
        assert got == want and [type(v) for v in got.values()] == [type(v) for v in want.values()]


def toml_inline(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
