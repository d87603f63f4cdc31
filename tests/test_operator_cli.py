"""What an operator types: `query` output a person reads (JSON values, nodes and edges with labels/type, id and
properties, table/json/csv, a Cypher error as one line with exit 2), `status` finding the daemon (`--config`,
`host:port`, "caught up"), help text on every `--config`, `run --log-level`, the run summary's query hint as
typed, `check-config` catching what `run` would trip on, and `--exit-when-idle` giving up on a target that never
comes up."""

from __future__ import annotations

import argparse
import csv
import http.server
import io
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.cli import build_parser, self_command, status_url
from daemon.cli import main as cli_main
from tests.stand.daemon_process import DaemonProcess
from tests.stand.harness import wait_for
from tests.test_file_source import run_cli
from tests.test_supervisor import free_port

pytestmark = pytest.mark.usefixtures("uncached_logs")


def _record(commit: int, op: int, data: dict[str, Any], last: bool = False) -> dict[str, Any]:
    record = {"commitTimestamp": 1_700_000_000_000, "eventId": {"commitNum": commit, "opNum": op}, "data": data}
    record["op"] = "ADD"
    if last:
        record["isLastOp"] = True
    return record


def _value(value: Any, kind: str = "String") -> dict[str, Any]:
    return {"value": value, "dataType": kind}


CAPTURE = [
    _record(1, 1, {"id": "ada", "type": "vl", "key": "label", "value": _value("Person")}),
    _record(1, 2, {"id": "ada", "type": "vp", "key": "private", "value": _value(False, "Boolean")}),
    _record(1, 3, {"id": "ada", "type": "vp", "key": "name", "value": _value('Ada, "the" first')}),
    _record(1, 4, {"id": "bob", "type": "vl", "key": "label", "value": _value("Person")}),
    _record(
        1, 5, {"id": "e1", "type": "e", "key": "label", "value": _value("KNOWS"), "from": "ada", "to": "bob"}, True
    ),
]


def _write_config(tmp_path: Path, *, source_path: str | None = None, sink: str = "", daemon: str = "") -> Path:
    capture = tmp_path / "capture.jsonl"
    if not capture.exists():
        capture.write_text("".join(orjson.dumps(r).decode() + "\n" for r in CAPTURE))
    path = tmp_path / "c.toml"
    path.write_text(
        f"""[daemon]
data_dir = "{tmp_path / "data"}"
http_address = ""
log_format = "json"
{daemon}

[[sources]]
name = "replay"
kind = "file"
sink = "g"
path = "{source_path or capture}"

[sinks.g]
kind = "falkordb"
{sink}
"""
    )
    return path


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config whose capture was replayed into the embedded engine once."""
    tmp_path = tmp_path_factory.mktemp("replicated")
    config = _write_config(tmp_path)
    run = run_cli("run", "--config", str(config), "--exit-when-idle")  # (run stays out of the test process)
    assert run.returncode == 0, run.stderr
    assert '"level":"info"' in run.stderr  # the config's log level (test_run_log_level_flag_overrides_the_config)
    return config


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------ query


def test_query_prints_nodes_and_edges_as_json_in_each_format(
    replicated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    statement = "MATCH (a {`~id`: 'ada'})-[r]->(b) RETURN a, r, b.`~id` AS to, a.private AS private"
    code, out, err = _cli(capsys, "query", "--config", str(replicated), "--format", "json", statement)
    assert code == 0, err
    (row,) = [orjson.loads(line) for line in out.splitlines()]
    assert row["a"] == {
        "id": "ada",
        "labels": ["Person"],  # the base label is the replicator's own, not the data's
        "properties": {"private": False, "name": 'Ada, "the" first'},
    }
    assert row["r"] == {"id": "e1", "type": "KNOWS", "properties": {}}
    assert row["to"] == "bob" and row["private"] is False

    code, out, err = _cli(capsys, "query", "--config", str(replicated), statement)  # table is the default
    assert code == 0, err
    header, rule, line, count = out.splitlines()
    assert header.split() == ["a", "r", "to", "private"] and set(rule) == {"-", " "}
    assert '"private":false' in line and "False" not in line and '"type":"KNOWS"' in line
    assert count == "(1 row)"

    code, out, err = _cli(capsys, "query", "--config", str(replicated), "--format", "csv", statement)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and rows[0]["to"] == "bob" and rows[0]["private"] == "false"
    assert orjson.loads(rows[0]["a"])["properties"]["name"] == 'Ada, "the" first'


def test_neptune_answers_take_the_same_shape() -> None:
    from daemon.query_format import Plain

    row = {
        "n": {"~id": "ada", "~entityType": "node", "~labels": ["Person"], "~properties": {"private": False}},
        "r": {
            "~id": "e1",
            "~entityType": "relationship",
            "~start": "ada",
            "~end": "bob",
            "~type": "KNOWS",
            "~properties": {"since": 2024},
        },
        "m": {"k": [1, None]},
    }
    assert Plain().row(row) == {
        "n": {"id": "ada", "labels": ["Person"], "properties": {"private": False}},
        "r": {"id": "e1", "type": "KNOWS", "from": "ada", "to": "bob", "properties": {"since": 2024}},
        "m": {"k": [1, None]},
    }


def test_a_cypher_error_is_one_line_and_exit_2(replicated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for statement in ("MATCH (n RETURN n", "RETURN nosuchfunction(1)"):
        code, out, err = _cli(capsys, "query", "--config", str(replicated), statement)
        assert code == 2, err
        assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("query failed: "), err
        assert "Traceback" not in err


# ------------------------------------------------------------------------------------------ status


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["status", *argv])


def _with_http(tmp_path: Path, address: str) -> Path:
    config = _write_config(tmp_path)
    config.write_text(config.read_text().replace('http_address = ""', f'http_address = "{address}"'))
    return config


def test_status_finds_the_daemon_from_a_url_or_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status_url(_args()) == "http://127.0.0.1:9464/status"
    assert status_url(_args("--url", "10.0.0.5:9555")) == "http://10.0.0.5:9555/status"
    assert status_url(_args("--url", "https://ops.example:443/")) == "https://ops.example:443/status"
    for address, url in (
        ("0.0.0.0:9555", "http://127.0.0.1:9555/status"),
        ("10.1.2.3:9600", "http://10.1.2.3:9600/status"),
        ("[::]:9600", "http://[::1]:9600/status"),
    ):
        assert status_url(_args("--config", str(_with_http(tmp_path, address)))) == url
    for address, reason in (("", "serves no /status"), ("127.0.0.1:0", "port 0")):
        assert status_url(_args("--config", str(_with_http(tmp_path, address)))) is None
        assert reason in capsys.readouterr().err


def test_status_help_shows_the_default_url_and_every_config_option_has_help() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "http://127.0.0.1:9464" in commands.choices["status"].format_help()
    seen = 0
    parsers = list(commands.choices.items())
    while parsers:
        name, sub = parsers.pop()
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += [(f"{name} {n}", p) for n, p in action.choices.items()]
            if "--config" in action.option_strings:
                seen += 1
                assert action.help, f"{name}: --config has no help text"
    assert seen >= 10  # run, check-config, status, query, capture, bootstrap and the four checkpoint actions


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[tuple[str, type[_StatusHandler]]]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", _StatusHandler
    finally:
        server.shutdown()


def test_a_finished_replay_shows_caught_up_not_its_age(
    status_server: tuple[str, type[_StatusHandler]], capsys: pytest.CaptureFixture[str]
) -> None:
    address, handler = status_server
    source = {
        "source": "replay",
        "state": "caught_up",
        "position": [1500, 3],
        "caught_up": True,
        "lag_seconds": 86_400 * 999 + 36_000,
        "changes_applied": 5382,
        "sink": "local",
        "sink_healthy": True,
    }
    handler.body = orjson.dumps(
        {"ready": True, "reasons": [], "uptime_seconds": 12, "dead_letters": 0, "sources": [source]}
    )
    code, out, err = _cli(capsys, "status", "--url", address)  # no scheme
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("replay"))
    assert "caught up" in line and "999d" not in line, out


# ------------------------------------------------------------------------------------------ run


def test_run_log_level_flag_overrides_the_config(replicated: Path) -> None:
    """In a process of its own: structlog keeps the first configuration of a logger it has used."""
    quiet = run_cli("run", "--config", str(replicated), "--exit-when-idle", "--log-level", "error")
    assert quiet.returncode == 0 and quiet.stdout.startswith("applied 0 changes"), quiet.stderr
    assert '"level":"info"' not in quiet.stderr, quiet.stderr  # the same run logged info lines without the flag


def test_the_query_hint_is_a_command_that_works_as_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    script = venv_bin / "graph-replicator"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert self_command(".venv/bin/graph-replicator") == ".venv/bin/graph-replicator"
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")  # an activated venv: the bare name is this script
    assert self_command(str(script)) == "graph-replicator"
    assert self_command(str(Path(sys.prefix) / "lib" / "daemon" / "__main__.py")) == f"{sys.executable} -m daemon"


# ------------------------------------------------------------------------------------------ check-config


def test_check_config_catches_a_missing_file_source_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path, source_path="captures/missing.jsonl")
    code, out, err = _cli(capsys, "check-config", "--config", str(config))
    assert code == 2 and out == "", err
    assert f"config error: sources[0].path: {Path.cwd() / 'captures/missing.jsonl'} does not exist" in err, err
    assert f"relative to {Path.cwd()}" in err


def test_check_config_says_what_relative_paths_resolve_against(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    (tmp_path / "cwd" / "capture.jsonl").write_text("")
    config = _write_config(tmp_path / "cwd", source_path="capture.jsonl")
    config.write_text(config.read_text().replace(f'"{tmp_path / "cwd" / "data"}"', '"./state"'))
    elsewhere = tmp_path / "etc" / "c.toml"
    elsewhere.parent.mkdir()
    config.rename(elsewhere)
    code, _, err = _cli(capsys, "check-config", "--config", str(elsewhere))
    assert code == 0, err
    assert (
        f"note: daemon.data_dir = './state' is relative: it resolves against the current directory, to "
        f"{tmp_path / 'cwd' / 'state'} (not against the config file's directory {tmp_path / 'etc'})"
    ) in err, err
    assert "note: sources[0].path = 'capture.jsonl' is relative" in err


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://localhost:6379/graphs", 'has path "/graphs"'),
        ("redis://localhost:6379/0?socket_timeout=soon", "does not parse as a redis URL"),
        ("redis://localhost:99999", "invalid port"),
    ],
)
def test_check_config_refuses_a_falkordb_url_the_client_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, reason: str
) -> None:
    config = _write_config(tmp_path, sink=f'url = "{url}"')
    code, _, err = _cli(capsys, "check-config", "--config", str(config))
    assert code == 2 and "config error: sinks.g.url: " in err and reason in err, err


# ------------------------------------------------------------------------------- a target that never comes up


def test_exit_when_idle_gives_up_on_a_target_that_never_comes_up(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = _write_config(
        tmp_path, sink=f'url = "redis://127.0.0.1:{port}"', daemon="idle_start_timeout_seconds = 1.5"
    )
    run = run_cli("run", "--config", str(config), "--exit-when-idle")
    assert run.returncode == 3, run.stderr
    assert (
        "source 'replay' stopped: its sink did not become ready within 1.5 s (idle_start_timeout_seconds): "
        "ConnectionError" in run.stdout
    ), run.stdout
    assert "giving up: the sink never became ready" in run.stderr


@pytest.mark.slow
def test_sigterm_before_the_sink_ever_came_up_is_not_a_success(tmp_path: Path) -> None:
    config = _write_config(tmp_path, sink=f'url = "redis://127.0.0.1:{free_port()}"')
    daemon = DaemonProcess(config, exit_when_idle=False, extra_env={"PATH": os.environ.get("PATH", "")})
    try:
        wait_for(
            lambda: any(
                line.get("event") == "pipeline crashed; restarting from its checkpoint" for line in daemon.log_lines()
            ),
            30,
            "the sink's first failure",
        )
    finally:
        daemon.terminate()
    assert daemon.wait(30) == 3, daemon.log_tail()
    assert any(line.get("event") == "stopped before the sink ever became ready" for line in daemon.log_lines())


# ------------------------------------------------------------------------------------------ docs


def test_the_configuration_docs_list_every_shipped_config_and_source_kind() -> None:
    from typing import get_args

    from daemon.config import SourceConfig

    root = Path(__file__).resolve().parent.parent
    docs = (root / "docs" / "configuration.md").read_text()
    intro = docs[: docs.index("## Shape of the file")]
    for config in sorted((root / "config").glob("*.toml")):
        assert f"(../config/{config.name})" in intro, f"docs/configuration.md does not list config/{config.name}"
    names = [get_args(member)[1].tag for member in get_args(get_args(SourceConfig)[0])]  # Annotated[model, Tag]
    assert sorted(names) == ["dynamodb", "file", "neptune", "neptune-sparql"], names
    for name in names:
        assert f"| `{name}` |" in intro, f"no annotated example of a {name} source"
    pyproject = (root / "pyproject.toml").read_text()
    description = next(line for line in pyproject.splitlines() if line.startswith("description"))
    assert "Neptune Streams" in description and "DynamoDB Streams" in description
