"""The DynamoDB examples run as the real daemon: the shipped `config/dynamodb-social.toml` pointed at moto, the
daemon as a subprocess, and the replica read back from its embedded FalkorDB."""

from __future__ import annotations

import re
from pathlib import Path

import falkordb

from daemon.engine import start_engine_in_thread
from tests.stand.comparator import read_falkordb_graph
from tests.stand.daemon_process import DaemonProcess, toml_value
from tests.stand.moto_process import MotoProcess
from tests.stand.workload import ReferenceGraph

SHIPPED = Path(__file__).parent.parent.parent / "config" / "dynamodb-social.toml"


def social_config(
    tmp_path: Path,
    moto: MotoProcess,
    *,
    sink: dict[str, object] | None = None,
    bootstrap: dict[str, object] | None = None,
    **source: object,
) -> Path:
    """The shipped example, pointed at moto, with a fast discovery and poll cadence for tests; `sink` replaces
    the embedded FalkorDB target, `bootstrap` adds a `[bootstrap]` table."""
    text = SHIPPED.read_text()
    if sink is not None:
        text = text[: text.index("[sinks.graph]")] + "[sinks.graph]\n" + _table(sink)
    if bootstrap is not None:
        text += "\n[bootstrap]\n" + _table(bootstrap)
    text = re.sub(r"^data_dir = .*$", f'data_dir = "{tmp_path / "data"}"', text, flags=re.M)
    text = re.sub(r"^http_address = .*$", 'http_address = "127.0.0.1:0"\nlog_format = "json"', text, flags=re.M)
    settings = {
        "endpoint": moto.url,
        "poll_interval_seconds": 0.1,
        "min_get_records_interval_seconds": 0.0,
        "discovery_interval_seconds": 1.0,
        **source,
    }
    text = re.sub(r"^# endpoint = .*$\n", _table(settings), text, flags=re.M)
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def _table(settings: dict[str, object]) -> str:
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items())


def replica(data_dir: Path) -> ReferenceGraph:
    engine, stop = start_engine_in_thread(data_dir / "falkordb" / "graph")
    try:
        graph = falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("graph")
        return read_falkordb_graph(graph, allow_unlabelled=True)
    finally:
        stop()


def run_to_idle(config: Path, timeout: float = 240) -> DaemonProcess:
    daemon = DaemonProcess(config)
    code = daemon.wait(timeout)
    assert code == 0, daemon.log_tail()
    return daemon
