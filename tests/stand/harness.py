"""Helpers for end-to-end tests: configs pointed at the stand, reading the replica back, polling, metrics."""

from __future__ import annotations

import time
from pathlib import Path

import falkordb
import orjson

from daemon.engine import start_engine_in_thread
from tests.stand.comparator import read_falkordb_graph
from tests.stand.daemon_process import DaemonProcess, toml_value, write_config
from tests.stand.neptune_endpoint import HIDDEN_LABEL, NeptuneStand
from tests.stand.workload import History, ReferenceGraph


def load_history(stand: NeptuneStand, history: History, commits: slice = slice(None)) -> None:
    """Append a history's commits (or a slice of them) to the stand's stream."""
    for ops, commit_ms in list(zip(history.commits, history.commit_ms, strict=True))[commits]:
        stand.stream.append_commit(ops, commit_ms)


def neptune_source(stand: NeptuneStand, **extra: object) -> dict[str, object]:
    return {
        "kind": "neptune",
        "endpoint": stand.url,
        "region": "us-east-1",
        "limit": 2000,
        "poll_interval_max_seconds": 0.2,
        **extra,
    }


def sink_config(kind: str, stand: NeptuneStand, **extra: object) -> dict[str, object]:
    """Sink settings for each target kind; the Neptune kinds write into the stand's FalkorDB."""
    fast_retry = {"retry_initial_seconds": 0.02, "retry_max_seconds": 0.5}
    if kind == "falkordb":
        return {"kind": "falkordb", "graph": "replica", **fast_retry, **extra}
    if kind == "neptune":
        return {"kind": "neptune", "endpoint": stand.url, "region": "us-east-1", **fast_retry, **extra}
    if kind == "neptune-analytics":
        return {
            "kind": "neptune-analytics",
            "endpoint": stand.url,
            "region": "us-east-1",
            "graph_id": "g-test",
            **fast_retry,
            **extra,
        }
    raise ValueError(kind)


def replica(kind: str, stand: NeptuneStand, data_dir: Path) -> ReferenceGraph:
    """Read back what the daemon wrote (after it exited)."""
    if kind != "falkordb":
        return read_falkordb_graph(
            stand.falkordb_graph(), hidden_labels=frozenset({HIDDEN_LABEL}), base_label=HIDDEN_LABEL
        )
    engine, stop = start_engine_in_thread(data_dir / "falkordb" / "target")
    try:
        return read_falkordb_graph(
            falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("replica")
        )
    finally:
        stop()


def config_for(
    tmp_path: Path,
    stand: NeptuneStand,
    kind: str,
    *,
    source: dict | None = None,
    sink: dict | None = None,
    daemon: dict | None = None,
) -> Path:
    return write_config(
        tmp_path / "config.toml",
        data_dir=tmp_path / "data",
        source=neptune_source(stand, **(source or {})),
        sink=sink_config(kind, stand, **(sink or {})),
        daemon=daemon,
    )


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def status(daemon: DaemonProcess) -> dict:
    code, body = daemon.get("/status")
    assert code == 200
    return orjson.loads(body)


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent), labels matched exactly."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics_text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        got = ",".join(sorted(p for p in label_text.rstrip("}").split(",") if p))
        if got == want:
            return float(value)
    return 0.0


def metric_sum(metrics_text: str, name: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rpartition(" ")[2])
    return total


def add_lease_table(path: Path, endpoint: str, table: str, **settings: object) -> Path:
    """Append `[checkpoint] kind = "dynamodb"` (the lease table `table` at `endpoint`) to a config file."""
    checkpoint = {"kind": "dynamodb", "table": table, "region": "us-east-1", "endpoint": endpoint, **settings}
    body = "".join(f"{k} = {toml_value(v)}\n" for k, v in checkpoint.items())
    path.write_text(path.read_text() + "\n[checkpoint]\n" + body)
    return path


def staging_bucket(moto_server: str, stand: NeptuneStand, bucket: str) -> str:
    """A bootstrap's staging bucket in moto's S3 (created once), and the stand's loader reading from there."""
    import boto3
    import botocore.config

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )
    if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=bucket)
    stand.loader.s3_endpoint = moto_server
    return bucket
