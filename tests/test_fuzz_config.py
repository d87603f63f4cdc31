"""Config loading against hostile input (hypothesis): TOML text, the shipped examples with values of the wrong
type, size or shape, and `GRAPH_REPLICATOR__SECTION__KEY` overrides with any name and value. The contract: a
`Config` (which `format_resolved` can print) or a `ConfigError` whose problems name a key and a reason, never
another exception. `FUZZ_EXAMPLES=5000` runs them harder."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daemon.config import ENV_PREFIX, Config, ConfigError, _toml_key, _toml_value, format_resolved, parse_config

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEAVY = settings(FUZZ, max_examples=max(30, EXAMPLES * 2 // 3))  # a pydantic validation and a print per example
ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {path.name: tomllib.loads(path.read_text()) for path in sorted((ROOT / "config").glob("*.toml"))}

toml_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=16)
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 2**63 - 1, -(2**63), 65536, 10**18]),
    st.floats(allow_nan=True, allow_infinity=True),
    toml_text,
    st.sampled_from(
        [
            "",
            "\x00",
            "neptune",
            "falkordb",
            "sqlite",
            "dynamodb",
            "file",
            "latest",
            "trim_horizon",
            "redis://h:99999",
            "redis://[::1",
            "https://",
            "http://h:-1",
            "127.0.0.1:70000",
            "[::1]:1",
            "us-east-1",
            "g-abc",
            "arn:aws:iam::1:role/x",
            "*",
            "{PK}",
            "{PK[99]}",
            "{",
            "}",
            "a{b}c",
        ]
    ),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(toml_text, inner, max_size=3)),
    max_leaves=8,
)


def render(data: dict[str, Any]) -> str:
    """TOML text for `data`: top-level keys with inline values (an inline array of tables is valid TOML)."""
    return "".join(f"{_toml_key(key)} = {_toml_value(value)}\n" for key, value in data.items())


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += paths(value, (*prefix, i))
    return out


def plausible(original: Any) -> st.SearchStrategy[Any]:
    """A value of the original's type: mostly valid configs, so the checks past the types run too."""
    if isinstance(original, bool):
        return st.booleans()
    if isinstance(original, int):
        return st.one_of(st.integers(-2, 10**6), st.sampled_from([0, 1, 2**31, 2**63 - 1]))
    if isinstance(original, float):
        return st.floats(-1, 1e6) | st.sampled_from([0.0, 1e-9, 1e300])
    if isinstance(original, str):
        return st.one_of(st.just(original), toml_text, toml_scalars.filter(lambda v: isinstance(v, str)))
    return st.just(original)


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A shipped example with a few keys replaced, removed or added."""
    data = tomllib.loads(render(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))]))  # a deep copy
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(paths(data)))
        parent: Any = data
        for part in where[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "replace":
            parent[where[-1]] = draw(st.one_of(toml_values, plausible(parent[where[-1]])))
        elif action == "remove":
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[draw(toml_text)] = draw(toml_values)
        if not isinstance(parent, dict | list) or not data:
            break
    return data


def outcome(text: str, environ: dict[str, str]) -> Config | None:
    try:
        config = parse_config(text, environ)
    except ConfigError as exc:
        assert exc.problems
        for key, reason in exc.problems:
            assert isinstance(key, str) and key and isinstance(reason, str) and reason
        str(exc)
        return None
    assert isinstance(config, Config)
    text = format_resolved(config)  # check-config prints it, as TOML
    tomllib.loads(text)
    text.encode("utf-8")  # every string in it is Unicode: names and values reach the engines and the logs
    paths = [config.daemon.resolved_data_dir, config.dead_letter_path, config.checkpoint_path]
    paths += [Path(source.path) for source in config.sources if source.kind == "file"]
    for path in paths:
        try:
            os.stat(path)  # what the daemon does with them first: no ValueError (a NUL in the path)
        except OSError:
            pass
    return config


@HEAVY
@given(mutated_configs())
def test_mutated_examples_load_or_fail_with_key_and_reason(data: dict[str, Any]) -> None:
    outcome(render(data), {})


@FUZZ
@given(st.text(max_size=200))
@example('[sinks.g]\nkind = "falkordb"\n[[sources]]\nname = "s"\nkind = "file"\nsink = "g"\npath = "\\u0000"\n')
@example("sources = 5\nsinks = []")
@example("[[sources]]\n[[sources]]\n[sinks]")
def test_arbitrary_text_loads_or_fails_with_key_and_reason(text: str) -> None:
    outcome(text, {})


env_parts = st.one_of(
    st.sampled_from(
        [
            "daemon",
            "checkpoint",
            "sources",
            "sinks",
            "bootstrap",
            "0",
            "1",
            "99",
            "main",
            "graph",
            "replica",
            "kind",
            "batch_size",
            "start",
            "rules",
            "url",
            "log_level",
            "http_address",
            "path",
            "mapping",
            "when",
            "commit_num",
            "",
            "x",
        ]
    ),
    st.text(st.characters(codec="ascii"), max_size=6),
)
env_names = st.one_of(
    st.lists(env_parts, min_size=0, max_size=5).map(lambda parts: ENV_PREFIX + "__".join(parts).upper()),
    st.sampled_from(  # every key the shipped examples set
        sorted({ENV_PREFIX + "__".join(map(str, p)).upper() for data in SHIPPED.values() for p in paths(data)})
    ),
)
env_values = st.one_of(
    toml_scalars.map(_toml_value),
    st.sampled_from(["1", "10", "0.5", "latest", "trim_horizon", "info", "dead_letter", "stop", "mark", "detach"]),
    st.sampled_from(
        [
            "5",
            "-1",
            "true",
            "inf",
            "nan",
            "1e999",
            "99999999999999999999999",
            "{a = 1}",
            "[1, 2]",
            "{commit_num = 1, op_num = 2}",
            '"x"',
            "[[x]]",
            "{",
            "",
            "\x00",
            "redis://h:1",
            "a\udcff",
        ]
    ),
    st.text(max_size=12),
    st.text(st.characters(codec="utf-8"), max_size=12).map(lambda t: t + "\udcff"),  # surrogateescape'd bytes
)


@st.composite
def environments(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    """A shipped example and overrides: most of its own keys (valid names), some of any name."""
    name = draw(st.sampled_from(sorted(SHIPPED)))
    own = sorted(ENV_PREFIX + "__".join(map(str, p)).upper() for p in paths(SHIPPED[name]))
    names = st.one_of(st.sampled_from(own), st.sampled_from(own), env_names, st.sampled_from(ODD_NAMES))
    return name, draw(st.dictionaries(names, env_values, max_size=3))


ODD_NAMES = [ENV_PREFIX, "GRAPH_REPLICATOR_X", "graph_replicator__daemon__log_level", ENV_PREFIX + "____"]


@FUZZ
@given(environments())
@example(("quickstart.toml", {ENV_PREFIX + "SOURCES__0": "x"}))
@example(("quickstart.toml", {ENV_PREFIX + "SOURCES__0__KIND__X": "1"}))
@example(("quickstart.toml", {ENV_PREFIX + "DAEMON__LOG_LEVEL__X": "1"}))
@example(("quickstart.toml", {ENV_PREFIX + "SINKS__LOCAL__URL": "a\udcff"}))
@example(("quickstart.toml", {ENV_PREFIX + "SINKS__LOCAL__BASE_LABEL": "L\udcff"}))
@example(("neptune-to-analytics.toml", {ENV_PREFIX + "SOURCES__0__START__COMMIT_NUM": "a\udcff"}))  # UnicodeEncodeError
@example(("quickstart.toml", {ENV_PREFIX + "DAEMON__DATA_DIR": "data\x00"}))  # was a ValueError at start
@example(("quickstart.toml", {ENV_PREFIX + "DAEMON__DATA_DIR": "a\n[daemon]"}))  # check-config printed bad TOML
def test_env_overrides_apply_or_fail_with_key_and_reason(case: tuple[str, dict[str, str]]) -> None:
    name, environ = case
    outcome((ROOT / "config" / name).read_text(), environ)
