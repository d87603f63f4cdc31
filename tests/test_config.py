"""Config loading: the example files, every kind of broken config, env overrides, printing and the docs."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.cli import main as cli_main
from daemon.config import (
    Config,
    ConfigError,
    FalkorDBSinkConfig,
    FileSourceConfig,
    NeptuneSourceConfig,
    StartPosition,
    format_resolved,
    load_config,
    mask_url,
    parse_config,
    parse_env_value,
    reference_markdown,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config").glob("*.toml"))

SOURCE = """
[[sources]]
name = "main"
kind = "neptune"
sink = "replica"
endpoint = "https://src.cluster-abc.us-east-1.neptune.amazonaws.com:8182"
region = "us-east-1"
"""
SINK = """
[sinks.replica]
kind = "falkordb"
"""
GOOD = SOURCE + SINK


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path, env or {})


def _problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text, env)
    return caught.value.problems


# ------------------------------------------------------------------------------------------- examples


def test_there_are_three_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "neptune-to-neptune.toml",
        "neptune-to-analytics.toml",
        "neptune-to-falkordb.toml",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    config = load_config(path, {})
    assert config.sources and all(config.sink_for(s) is config.sinks[s.sink] for s in config.sources if s.sink)
    assert all(s.sink or s.event_sinks for s in config.sources)  # event sinks only: no graph sink
    assert parse_config(format_resolved(config), {}) == config


def test_quickstart_replays_the_sample_into_the_embedded_engine() -> None:
    config = load_config(ROOT / "config" / "quickstart.toml", {})
    source = config.sources[0]
    assert isinstance(source, FileSourceConfig)
    assert (ROOT / source.path).is_file() and source.on_malformed == "stop" and not source.follow
    sink = config.sink_for(source)
    assert isinstance(sink, FalkorDBSinkConfig) and sink.embedded
    assert config.checkpoint.kind == "sqlite" and config.daemon.data_dir == "./data/quickstart"


def test_falkordb_example_uses_the_embedded_engine() -> None:
    config = load_config(ROOT / "config" / "neptune-to-falkordb.toml", {})
    sink = config.sink_for("main")
    assert isinstance(sink, FalkorDBSinkConfig) and sink.embedded


# ------------------------------------------------------------------------------------------- defaults


def test_minimal_config_fills_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = _load(tmp_path, GOOD)
    assert config.daemon.http_bind == ("127.0.0.1", 9464)
    assert config.daemon.resolved_data_dir == tmp_path / "data"
    assert config.checkpoint_path == tmp_path / "data" / "checkpoints.sqlite3"
    assert config.dead_letter_path == tmp_path / "data" / "dead-letter.jsonl"
    source = config.source("main")
    assert isinstance(source, NeptuneSourceConfig)
    assert (source.start, source.limit, source.queue_size) == ("trim_horizon", 1000, 8)
    sink = config.sink_for(source)
    assert isinstance(sink, FalkorDBSinkConfig)
    assert (sink.graph, sink.id_property, sink.base_label, sink.batch_size) == (
        "graph",
        "~id",
        "Replicated",
        500,
    )
    assert sink.embedded and sink.password is None


def test_paths_and_start_position(tmp_path: Path) -> None:
    text = f"""
[daemon]
http_address = ""
data_dir = "{tmp_path}/d"
dead_letter_path = "{tmp_path}/dl.jsonl"
log_level = "WARNING"
[checkpoint]
path = "{tmp_path}/cp.sqlite3"
""" + GOOD.replace('region = "us-east-1"', 'region = "us-east-1"\nstart = {commit_num = 7, op_num = 2}')
    config = _load(tmp_path, text)
    assert config.daemon.http_bind is None and config.daemon.log_level == "warning"
    assert config.checkpoint_path == tmp_path / "cp.sqlite3"
    assert config.dead_letter_path == tmp_path / "dl.jsonl"
    assert config.sources[0].start == StartPosition(commit_num=7, op_num=2)
    assert config.sources[0].start.position == (7, 2)


FILE_SOURCE = (
    """
[[sources]]
name = "cap"
kind = "file"
sink = "replica"
path = "captures/"
"""
    + SINK
)


def test_file_source_keys_and_defaults(tmp_path: Path) -> None:
    source = _load(tmp_path, FILE_SOURCE).source("cap")
    assert isinstance(source, FileSourceConfig)
    assert (source.path, source.limit, source.on_malformed, source.follow, source.poll_interval_seconds) == (
        "captures/",
        5000,
        "stop",
        False,
        1.0,
    )
    assert (source.queue_size, source.window_max_changes, source.edge_type_cache_size) == (8, 20000, 200000)
    text = FILE_SOURCE.replace(
        'path = "captures/"',
        'path = "c.jsonl.gz"\nlimit = 100\non_malformed = "dead_letter"\nfollow = true\npoll_interval_seconds = 0.2',
    )
    config = _load(tmp_path, text, {"GRAPH_REPLICATOR__SOURCES__CAP__LIMIT": "7"})
    source = config.source("cap")
    assert isinstance(source, FileSourceConfig)
    assert (source.path, source.limit, source.on_malformed, source.follow, source.poll_interval_seconds) == (
        "c.jsonl.gz",
        7,
        "dead_letter",
        True,
        0.2,
    )
    assert parse_config(format_resolved(config), {}) == config


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (('path = "captures/"', ""), "path", "required"),
        (('path = "captures/"', 'path = ""'), "path", "at least 1 character"),
        (('path = "captures/"', 'path = "c"\non_malformed = "skip"'), "on_malformed",
         "should be 'stop' or 'dead_letter' (got \"skip\")"),
        (('path = "captures/"', 'path = "c"\nfollow = "yes"'), "follow", "valid boolean"),
        (('path = "captures/"', 'path = "c"\npoll_interval_seconds = 0'), "poll_interval_seconds", "greater than 0"),
        (('path = "captures/"', 'path = "c"\nlimit = 0'), "limit", "greater than or equal to 1"),
        (('path = "captures/"', 'path = "c"\nendpoint = "https://h:8182"'), "endpoint", "unknown key"),
        (('path = "captures/"', 'path = "c"\nfolow = true'), "folow", 'did you mean "follow"'),
    ],
)  # fmt: skip
def test_broken_file_source(tmp_path: Path, change: tuple[str, str], key: str, reason: str) -> None:
    problems = _problems(tmp_path, FILE_SOURCE.replace(*change))
    matching = [r for k, r in problems if k == f'sources[0] (name "cap").{key}']
    assert matching and any(reason in r for r in matching), problems


@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::1]:9464", "localhost:65535"])
def test_http_addresses_accepted(tmp_path: Path, address: str) -> None:
    assert _load(tmp_path, f'[daemon]\nhttp_address = "{address}"\n' + GOOD).daemon.http_bind is not None


# ------------------------------------------------------------------------------------------- broken configs

_M = 'sources[0] (name "main")'
_R = "sinks.replica"
_SOURCE_KEYS = {
    "name": '"main"',
    "kind": '"neptune"',
    "sink": '"replica"',
    "endpoint": '"https://src.cluster-abc.us-east-1.neptune.amazonaws.com:8182"',
    "region": '"us-east-1"',
}


def _cfg(top: str = "", source: dict[str, str | None] | None = None, sink: str = "", more: str = "") -> str:
    """GOOD with `top` before it, source keys replaced (None drops one) and `sink` lines added to the sink."""
    keys = {**_SOURCE_KEYS, **(source or {})}
    lines = "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)
    return f'{top}\n[[sources]]\n{lines}\n[sinks.replica]\nkind = "falkordb"\n{sink}\n{more}'


def _env(var: str, value: str = "5") -> dict[str, str]:
    return {f"GRAPH_REPLICATOR__{var}": value}


P = pytest.param
BROKEN = [
    P(_cfg(source={"endpoint": None}), {}, f"{_M}.endpoint", "required", id="missing endpoint"),
    P(_cfg(source={"region": "5"}), {}, f"{_M}.region", "should be a valid string (got 5)", id="region type"),
    P(_cfg(source={"region": '"US East"'}), {}, f"{_M}.region", "AWS region", id="region name"),
    P(_cfg(source={"endpoint": '"ftp://h"'}), {}, f"{_M}.endpoint", "http or https URL", id="endpoint"),
    P(_cfg(sink="batch_size = 0"), {}, f"{_R}.batch_size", "greater than or equal to 1", id="batch 0"),
    P(_cfg(sink="batch_size = '5'"), {}, f"{_R}.batch_size", "valid integer", id="batch string"),
    P(_cfg(sink="concurrency = 1000"), {}, f"{_R}.concurrency", "less than or equal to 64", id="concurrency"),
    P(_cfg(sink="retry_initial_seconds = 2.0\nretry_max_seconds = 1.0"), {}, f"{_R}.retry_max_seconds",
      ">= retry_initial_seconds", id="retry max < initial"),
    P(_cfg(top="bogus = 1"), {}, "bogus", "unknown key; known keys: daemon, checkpoint", id="top key"),
    P(_cfg(sink="batch_sise = 5"), {}, "sinks.replica.batch_sise", 'did you mean "batch_size"', id="typo"),
    P(_cfg(source={"kind": '"kafka"'}), {}, f"{_M}.kind", 'unknown kind "kafka"; known kinds: "neptune"',
      id="unknown source kind"),
    P(_cfg(source={"kind": '"dynamodb"'}), {}, f"{_M}.rules", "required", id="dynamodb source without rules"),
    P(_cfg(source={"kind": None}), {}, f"{_M}.kind", 'required; known kinds: "neptune"', id="no source kind"),
    P(_cfg().replace('"falkordb"', '"neo4j"'), {}, f"{_R}.kind",
      'known kinds: "falkordb", "neptune", "neptune-analytics"', id="unknown sink kind"),
    P(_cfg(source={"sink": '"replika"'}), {}, f"{_M}.sink",
      'no sink named "replika" in [sinks] (defined sinks: "replica")', id="sink not defined"),
    P(_cfg(more="[[sources]]\n" + "".join(f"{k} = {v}\n" for k, v in _SOURCE_KEYS.items())), {},
      'sources[1] (name "main").name', "duplicate source name (also sources[0])", id="duplicate names"),
    P(_cfg(source={"name": '"my source"'}), {}, 'sources[0] (name "my source").name', "letters, digits",
      id="bad source name"),
    P('[sinks.replica]\nkind = "falkordb"\n', {}, "sources", "at least one [[sources]]", id="no sources"),
    P(_cfg(source={"start": "{commit_num = 5, op_num = 0}"}), {}, f"{_M}.start",
      "op_num: should be greater than or equal to 1 (got 0)", id="start op_num 0"),
    P(_cfg(source={"start": '"earliest"'}), {}, f"{_M}.start",
      'should be "trim_horizon", "latest" or {commit_num = N, op_num = M}', id="start word"),
    P(_cfg(source={"poll_interval_max_seconds": "0.01"}), {}, f"{_M}.poll_interval_max_seconds",
      ">= poll_interval_min_seconds (0.05)", id="poll max < min"),
    P(_cfg(source={"limit": "100001"}), {}, f"{_M}.limit", "less than or equal to 100000", id="limit"),
    P(_cfg(top='[daemon]\nhttp_address = "h"'), {}, "daemon.http_address", '"host:port"', id="no port"),
    P(_cfg(top='[daemon]\nhttp_address = "h:99999"'), {}, "daemon.http_address", "0 to 65535", id="port"),
    P(_cfg(top='[daemon]\nlog_level = "verbose"'), {}, "daemon.log_level", '(got "verbose")', id="log level"),
    P(_cfg(top="[daemon]\ndrain_grace_seconds = 0"), {}, "daemon.drain_grace_seconds", "greater than 0",
      id="drain 0"),
    P(_cfg(top="[daemon]\ndrain_grace_seconds = inf"), {}, "daemon.drain_grace_seconds", "finite number",
      id="drain inf"),
    P(_cfg(top="daemon = 5"), {}, "daemon", "should be a table", id="daemon not a table"),
    P(_cfg(sink='url = "http://h:6379"'), {}, f"{_R}.url", "redis or rediss URL", id="redis url"),
    P(_cfg(more='[sinks.a]\nkind = "neptune-analytics"\ngraph_id = "abc"\nregion = "us-east-1"'), {},
      "sinks.a.graph_id", '"g-abc123"', id="graph id"),
    P(_cfg(top='[checkpoint]\nkind = "etcd"'), {}, "checkpoint.kind", 'known kinds: "sqlite", "dynamodb"',
      id="checkpoint kind"),
    P(_cfg(top="[daemon]\nlog_level = debug"), {}, "{path}", "TOML syntax error: Invalid value (at line 2,",
      id="toml syntax"),
    P(_cfg(), _env("SINKS__NOPE__BATCH_SIZE"), "GRAPH_REPLICATOR__SINKS__NOPE__BATCH_SIZE",
      'no sink named "nope" in [sinks] (defined sinks: "replica")', id="env missing sink"),
    P(_cfg(), _env("SOURCES__3__LIMIT"), "GRAPH_REPLICATOR__SOURCES__3__LIMIT", "no source at index 3",
      id="env missing source index"),
    P(_cfg(), _env("SOURCES__OTHER__LIMIT"), "GRAPH_REPLICATOR__SOURCES__OTHER__LIMIT",
      'no source named "other" (sources: "main")', id="env missing source name"),
    P(_cfg(), _env("DAEMON"), "GRAPH_REPLICATOR__DAEMON", "SECTION__KEY", id="env without key"),
    P(_cfg(source={"start": '"latest"'}), _env("SOURCES__0__START__OP_NUM"),
      "GRAPH_REPLICATOR__SOURCES__0__START__OP_NUM", f"{_M}.start is not a table", id="env into string"),
    P(_cfg(), _env("SINKS__REPLICA__BATCH_SIZE", "0"), f"{_R}.batch_size",
      "(got 0) (set by GRAPH_REPLICATOR__SINKS__REPLICA__BATCH_SIZE)", id="env value invalid"),
]  # fmt: skip


def test_dynamodb_checkpoint_is_accepted_with_neptune_sources(tmp_path: Path) -> None:
    """Active/standby on the lease table: accepted when every source has one partition (neptune, file)."""
    text = _cfg(top='[checkpoint]\nkind = "dynamodb"\ntable = "cp"\nregion = "us-east-1"\nlease_duration_seconds = 9')
    config = _load(tmp_path, text)
    assert config.checkpoint.kind == "dynamodb" and config.checkpoint_path is None


@pytest.mark.parametrize(("text", "env", "key", "reason"), BROKEN)
def test_broken_config(tmp_path: Path, text: str, env: dict[str, str], key: str, reason: str) -> None:
    problems = _problems(tmp_path, text, env)
    key = key.format(path=tmp_path / "c.toml")
    matching = [r for k, r in problems if k == key]
    assert matching, f"no problem for {key!r} in {problems}"
    assert any(reason in r for r in matching), f"{reason!r} not in {matching}"


@pytest.mark.parametrize(("text", "env", "key", "reason"), BROKEN)
def test_check_config_command_names_key_and_reason(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    env: dict[str, str],
    key: str,
    reason: str,
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    for name in [n for n in os.environ if n.upper().startswith("GRAPH_REPLICATOR__")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli_main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"config error: {key.format(path=path)}: " in err and reason in err, err


def test_check_config_command_prints_the_resolved_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    assert cli_main(["check-config", "--config", str(path)]) == 0
    assert tomllib.loads(capsys.readouterr().out)["sinks"]["replica"]["batch_size"] > 0


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace('region = "us-east-1"', "region = 5").replace('sink = "replica"', 'sink = "x"')
    problems = _problems(tmp_path, text + "concurrency = 0\n")
    assert [k for k, _ in problems] == [f"{_M}.region", "sinks.replica.concurrency", f"{_M}.sink"]


def test_error_text_lists_key_and_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, GOOD + "batch_size = 0\n")
    assert str(caught.value) == ("config error: sinks.replica.batch_size: should be greater than or equal to 1 (got 0)")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml", {})
    assert caught.value.problems == [(str(tmp_path / "absent.toml"), "file not found")]


def test_secret_values_are_not_echoed(tmp_path: Path) -> None:
    problems = _problems(tmp_path, GOOD + 'url = "http://u:hunter2@h"\n')
    assert problems and not any("hunter2" in r for _, r in problems)


# ------------------------------------------------------------------------------------------- env overrides


def test_env_override_by_index_name_and_case(tmp_path: Path) -> None:
    env = {
        "GRAPH_REPLICATOR__SOURCES__0__ENDPOINT": "https://other:8182",
        "graph_replicator__sources__MAIN__limit": "50",
        "GRAPH_REPLICATOR__SOURCES__main__START": "{commit_num = 5, op_num = 1}",
        "GRAPH_REPLICATOR__SINKS__Replica__BATCH_SIZE": "1000",
        "GRAPH_REPLICATOR__DAEMON__LOG_LEVEL": "debug",
        "GRAPH_REPLICATOR__DAEMON__DRAIN_GRACE_SECONDS": "1.5",
        "UNRELATED": "1",
    }
    config = _load(tmp_path, GOOD, env)
    source = config.sources[0]
    assert (source.endpoint, source.limit, source.start) == (
        "https://other:8182",
        50,
        StartPosition(commit_num=5, op_num=1),
    )
    assert config.sinks["replica"].batch_size == 1000
    assert (config.daemon.log_level, config.daemon.drain_grace_seconds) == ("debug", 1.5)


def test_env_override_string_keys_keep_their_text(tmp_path: Path) -> None:
    env = {
        "GRAPH_REPLICATOR__SINKS__REPLICA__GRAPH": "2024",
        "GRAPH_REPLICATOR__SINKS__REPLICA__PASSWORD": "true",
    }
    sink = _load(tmp_path, GOOD, env).sinks["replica"]
    assert isinstance(sink, FalkorDBSinkConfig)
    assert sink.graph == "2024" and sink.password is not None and sink.password.get_secret_value() == "true"
    quoted = _load(tmp_path, GOOD, {"GRAPH_REPLICATOR__SINKS__REPLICA__GRAPH": '"g x"'}).sinks["replica"]
    assert isinstance(quoted, FalkorDBSinkConfig) and quoted.graph == "g x"


def test_env_override_wins_over_file_and_reads_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nlog_level = "info"\n' + GOOD)
    monkeypatch.setenv("GRAPH_REPLICATOR__DAEMON__LOG_LEVEL", "error")
    assert load_config(path).daemon.log_level == "error"
    assert load_config(path, {}).daemon.log_level == "info"


def test_env_override_unknown_key_is_named(tmp_path: Path) -> None:
    problems = _problems(tmp_path, GOOD, {"GRAPH_REPLICATOR__DAEMON__LOGLEVEL": "debug"})
    assert problems == [
        (
            "daemon.loglevel",
            'unknown key (did you mean "log_level"?) (set by GRAPH_REPLICATOR__DAEMON__LOGLEVEL)',
        )
    ]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("5", 5),
        ("true", True),
        ("1.5", 1.5),
        ('"x"', "x"),
        ("{commit_num = 5, op_num = 1}", {"commit_num": 5, "op_num": 1}),
        ("[1, 2]", [1, 2]),
        ("debug", "debug"),
        ("https://h:8182", "https://h:8182"),
        ("", ""),
        ("5\nx = 1", "5\nx = 1"),
        ("us-east-1", "us-east-1"),
    ],
)
def test_parse_env_value(raw: str, value: object) -> None:
    assert parse_env_value(raw) == value


_TEXT = st.text(st.characters(exclude_categories=("Cs",)))
_TOML_VALUES = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@given(_TOML_VALUES)
def test_env_value_round_trips_every_toml_value(value: object) -> None:
    from daemon.config import _toml_value

    assert parse_env_value(_toml_value(value)) == value


@given(_TEXT)
def test_env_value_is_the_text_or_the_toml_value_it_spells(raw: str) -> None:
    parsed = parse_env_value(raw)
    if parsed != raw:
        assert tomllib.loads(f"v = {raw}") == {"v": parsed}


# ------------------------------------------------------------------------------------------- printing


def test_format_resolved_masks_secrets(tmp_path: Path) -> None:
    text = GOOD + 'url = "redis://admin:hunter2@db.internal:6379"\npassword = "s3cr3t-pw"\n'
    config = _load(tmp_path, text)
    out = format_resolved(config)
    in_query = format_resolved(_load(tmp_path, GOOD + 'url = "redis://db.internal:6379?password=hunter3"\n'))
    assert "hunter3" not in in_query and 'url = "redis://db.internal:6379?password=***"' in in_query
    assert "hunter2" not in out and "s3cr3t-pw" not in out
    assert 'url = "redis://admin:***@db.internal:6379"' in out and 'password = "***"' in out
    assert "hunter2" not in repr(config) and "s3cr3t-pw" not in repr(config)
    again = parse_config(out, {})
    sink = config.sinks["replica"]
    masked = sink.model_copy(
        update={"url": "redis://admin:***@db.internal:6379", "password": again.sinks["replica"].password}
    )  # type: ignore[union-attr]
    assert again.model_copy(update={"sinks": {"replica": masked}}) == again
    assert again.model_copy(update={"sinks": config.sinks}) == config


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://user:pass@host:6379", "redis://user:***@host:6379"),
        ("rediss://:pass@host", "rediss://:***@host"),
        ("redis://host:6379", "redis://host:6379"),
        ("redis://user@host", "redis://user@host"),
        ("redis://host:6379/0?password=hunter2&db=1", "redis://host:6379/0?password=***&db=1"),
        ("redis://host?Secret_Token=x", "redis://host?Secret_Token=***"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_format_resolved_round_trips_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, GOOD)
    out = format_resolved(config)
    assert tomllib.loads(out)["sinks"]["replica"]["batch_size"] == 500
    assert parse_config(out, {}) == config


@given(sink_name=_TEXT.filter(bool), graph=_TEXT.filter(bool), label=_TEXT.filter(bool))
def test_format_resolved_round_trips_any_names(sink_name: str, graph: str, label: str) -> None:
    config = Config.model_validate(
        {
            "sources": [{"kind": "neptune", "name": "s", "sink": sink_name, "endpoint": "http://h:1",
                         "region": "us-east-1", "start": {"commit_num": 1, "op_num": 2}}],
            "sinks": {sink_name: {"kind": "falkordb", "graph": graph, "base_label": label}},
        }
    )  # fmt: skip
    assert parse_config(format_resolved(config), {}) == config


# ------------------------------------------------------------------------------------------- docs


def test_docs_reference_is_current() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert reference_markdown() in doc, (
        "docs/configuration.md is stale: run `python -m daemon.config docs/configuration.md`"
    )


def test_every_key_is_described() -> None:
    from daemon.config import _REFERENCE_SECTIONS

    for _, model, _ in _REFERENCE_SECTIONS:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
