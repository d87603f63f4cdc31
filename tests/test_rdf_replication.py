"""RDF end to end: a seeded SPARQL stream history (tests.stand.rdf_workload) served by the stand's GetSparqlStream
and replicated into the embedded Oxigraph store and into the stand's SPARQL 1.1 endpoint, compared with the
reference dataset as sets of quads (blank nodes by the skolem rule), through stream throttling and 5xx, sink
conflicts and dropped answers, a drain mid-run, SIGKILLs, and a malformed statement and a refused quad that go to
the dead-letter file."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pyoxigraph import DefaultGraph, NamedNode, Quad, Store

from daemon.cli import main as cli_main
from daemon.config import load_config
from daemon.rdf import default_blank_node_prefix, nquad
from daemon.supervisor import Supervisor
from tests.stand.daemon_process import AWS_ENV, DaemonProcess, write_config
from tests.stand.harness import metric_value, status, wait_for
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.rdf_workload import RdfHistory, generate_rdf_history

PREFIX = default_blank_node_prefix("main")  # the source is called "main" in write_config


@pytest.fixture(scope="module")
def history() -> RdfHistory:
    return generate_rdf_history(17, 400, blank_node_prefix=PREFIX)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)


def load(stand: NeptuneStand, history: RdfHistory, commits: slice = slice(None)) -> None:
    for ops in history.commits[commits]:
        stand.sparql_stream.append_commit(ops)


def config(tmp_path: Path, stand: NeptuneStand, sink: dict[str, Any], **source: Any) -> Path:
    return write_config(
        tmp_path / "config.toml",
        data_dir=tmp_path / "data",
        source={
            "kind": "neptune-sparql",
            "endpoint": stand.url,
            "region": "us-east-1",
            "limit": 97,
            "poll_interval_max_seconds": 0.2,
            **source,
        },
        sink={"retry_initial_seconds": 0.02, "retry_max_seconds": 0.3, "batch_size": 40, **sink},
    )


def run_in_process(path: Path, *, stop_after_changes: int | None = None) -> Supervisor:
    """`run --exit-when-idle` on this thread; with `stop_after_changes`, a drain (SIGTERM) once that many changes
    are applied, from another thread."""
    loop = asyncio.new_event_loop()
    supervisor = Supervisor(load_config(path), exit_when_idle=stop_after_changes is None)

    def watch() -> None:
        wait_for(lambda: supervisor.pipelines[0].changes_applied >= stop_after_changes, 60, "progress")
        loop.call_soon_threadsafe(supervisor.request_drain)

    try:
        if stop_after_changes is not None:
            threading.Thread(target=watch, daemon=True).start()
        assert loop.run_until_complete(supervisor.run()) == 0
    finally:
        loop.close()
    return supervisor


def embedded_quads(tmp_path: Path) -> set[Quad]:
    store = Store(str(tmp_path / "data" / "oxigraph" / "target"))
    try:
        return set(store.quads_for_pattern(None, None, None, None))
    finally:
        del store


def assert_same(expected: set[Quad], got: set[Quad]) -> None:
    missing, extra = sorted(map(nquad, expected - got)), sorted(map(nquad, got - expected))
    assert not missing and not extra, f"missing {missing[:5]} extra {extra[:5]} ({len(missing)}/{len(extra)})"


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "data" / "dead-letter.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_embedded_store_converges_through_stream_faults_and_a_drain(
    stand: NeptuneStand, history: RdfHistory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pages of 97 records split commits; throttling and 5xx on the stream; a drain mid-run, then the rest of the
    history arrives and a second run finishes it. A malformed statement is dead-lettered with its position."""
    load(stand, history, slice(0, 250))
    bad_commit = stand.sparql_stream.append_commit([{"op": "ADD", "data": {"stmt": '<http://s> <http://p> "x .\n'}}])
    stand.faults.configure(rate=0.2, kinds=["throttling", "server_error"], seed=3, paths=("sparql_stream",))
    path = config(tmp_path, stand, {"kind": "oxigraph"}, limit=37, window_max_changes=30, queue_size=1)
    first = run_in_process(path, stop_after_changes=history.n_ops // 4)
    assert 0 < first.pipelines[0].changes_applied < history.n_ops
    load(stand, history, slice(250, None))
    second = run_in_process(path)
    assert second.summary is not None and second.summary.quads == {"target": len(history.reference)}
    assert sum(stand.faults.injected.values()) > 3
    assert_same(history.reference, embedded_quads(tmp_path))
    [letter] = dead_letters(tmp_path)
    assert letter["stage"] == "translate" and letter["position"] == [bad_commit, 1]
    assert "N-Quads" in letter["reason"]
    # `graph-replicator query` answers SPARQL on the embedded store (no daemon holds it now)
    assert cli_main(["query", "--config", str(path), "--format", "json",
                     "SELECT (COUNT(*) AS ?n) WHERE { GRAPH ?g { ?s ?p ?o } }"]) == 0  # fmt: skip
    named = sum(1 for q in history.reference if not isinstance(q.graph_name, DefaultGraph))
    row = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    assert row == {"n": f'"{named}"^^<http://www.w3.org/2001/XMLSchema#integer>'}


def test_sigkill_mid_run_converges(stand: NeptuneStand, history: RdfHistory, tmp_path: Path) -> None:
    load(stand, history)
    stand.faults.configure(rate=1.0, kinds=["slow"], seed=1, paths=("sparql_stream",))  # pages take 0.3-1 s
    path = config(tmp_path, stand, {"kind": "oxigraph"}, limit=40, queue_size=2)
    positions = []
    for _ in range(2):
        daemon = DaemonProcess(path, exit_when_idle=False)
        floor = positions[-1][0] if positions else 0

        def applied(d: DaemonProcess = daemon) -> float:
            return metric_value(d.get("/metrics")[1].decode(), "graph_replicator_records_applied_total",
                                source="main", sink="target")  # fmt: skip

        # (the position shown before the first window is the stored checkpoint, which may already pass `floor`:
        # the last run went on applying after its position was read)
        wait_for(lambda d=daemon, f=floor: (status(d)["sources"][0]["position"] or [0])[0] > f, 60, "progress")
        wait_for(applied, 60, "a window applied by this run")
        time.sleep(0.3)
        positions.append(status(daemon)["sources"][0]["position"])
        daemon.kill()
    stand.faults.clear()
    final = DaemonProcess(path)
    assert final.wait(120) == 0, final.log_tail()
    assert positions == sorted(positions)
    assert_same(history.reference, embedded_quads(tmp_path))


def test_sparql_endpoint_converges_through_sink_faults_with_a_refused_quad(
    stand: NeptuneStand, history: RdfHistory, tmp_path: Path
) -> None:
    """SigV4-signed updates to the stand's pyoxigraph endpoint, with ConcurrentModificationException, throttling,
    5xx and answers lost after the update committed; one quad the endpoint refuses is bisected out and
    dead-lettered, everything else converges."""
    load(stand, history)
    poison_quad = next(q for q in sorted(history.reference, key=nquad) if "p/age" in str(q.predicate))
    stand.faults.poison(str(poison_quad.object) + " .")
    stand.faults.configure(
        rate=0.15,
        kinds=["concurrent_modification", "throttling", "server_error", "drop_after_commit"],
        seed=5,
        paths=("sparql",),
    )
    sink = {"kind": "sparql", "update_url": f"{stand.url}/sparql", "auth": "sigv4", "region": "us-east-1",
            "attempts_before_split": 3}  # fmt: skip
    supervisor = run_in_process(config(tmp_path, stand, sink))
    assert sum(stand.faults.injected.values()) > 3
    refused = {q for q in history.reference if str(q.object) == str(poison_quad.object)}
    held = set(stand.rdf_store.quads_for_pattern(None, None, None, None))
    assert_same(history.reference - refused, held - refused)
    letters = dead_letters(tmp_path)
    assert letters and all(
        letter["stage"] == "apply" and str(poison_quad.object) in letter["change"]["quad"] for letter in letters
    )
    assert supervisor.summary is not None and supervisor.summary.dead_letters == len(dead_letters(tmp_path))


def test_capture_of_a_sparql_stream_replays_through_the_file_source(
    stand: NeptuneStand, history: RdfHistory, tmp_path: Path
) -> None:
    """`graph-replicator capture` reads GetSparqlStream; a `file` source with format = "nquads" replays the capture
    into the embedded store (named "main" too, so its blank nodes get the same skolem IRIs)."""
    load(stand, history)
    live = config(tmp_path, stand, {"kind": "oxigraph"})
    output = tmp_path / "capture.jsonl.gz"
    assert cli_main(["capture", "--config", str(live), "--source", "main", "--output", str(output),
                     "--until-caught-up"]) == 0  # fmt: skip
    replay = write_config(
        tmp_path / "replay.toml",
        data_dir=tmp_path / "data",
        source={"kind": "file", "format": "nquads", "path": str(output), "limit": 113},
        sink={"kind": "oxigraph"},
    )
    supervisor = run_in_process(replay)
    assert supervisor.pipelines[0].changes_applied == history.n_ops
    assert_same(history.reference, embedded_quads(tmp_path))


def test_rdf_quickstart_replays_the_shipped_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped sample into the embedded store equals the sample's statements applied in order (ADD / REMOVE on
    a set of quads), blank nodes under the configured prefix; `query` refuses while a daemon holds the store."""
    import gzip

    from daemon.rdf import parse_statement

    root = Path(__file__).resolve().parents[1]
    text = (root / "config" / "quickstart-rdf.toml").read_text()
    text = text.replace('"./data/quickstart-rdf"', f'"{tmp_path / "data"}"')
    text = text.replace('"config/samples/', f'"{root}/config/samples/')
    path = tmp_path / "quickstart-rdf.toml"
    path.write_text(text)
    prefix = load_config(path).sources[0].blank_node_prefix
    expected: set[Quad] = set()
    for line in gzip.decompress((root / "config/samples/library-rdf-history.jsonl.gz").read_bytes()).splitlines():
        record = orjson.loads(line)
        quad = parse_statement(record["data"]["stmt"], prefix)
        (expected.add if record["op"] == "ADD" else expected.discard)(quad)
    supervisor = run_in_process(path)
    assert supervisor.summary is not None and supervisor.summary.quads == {"store": len(expected)}
    store = Store(str(tmp_path / "data" / "oxigraph" / "store"))
    held = set(store.quads_for_pattern(None, None, None, None))
    del store
    assert_same(expected, held)
    assert len({q.graph_name for q in held}) == 4  # three branches and the default graph

    # while a daemon holds the data directory, `query` refuses (RocksDB opens a store in one process)
    from daemon.datadir import DataDirLock

    lock = DataDirLock(tmp_path / "data", "graph-replicator run").acquire()
    try:
        assert cli_main(["query", "--config", str(path), "ASK { ?s ?p ?o }"]) == 1
    finally:
        lock.release()
    assert "one process at a time" in capsys.readouterr().err
    assert cli_main(["query", "--config", str(path), "--format", "json", "ASK { ?s ?p ?o }"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == '{"ask":true}'


def test_sigkill_mid_run_into_the_sparql_endpoint_converges(
    stand: NeptuneStand, history: RdfHistory, tmp_path: Path
) -> None:
    load(stand, history)
    stand.faults.configure(rate=1.0, kinds=["slow"], seed=2, paths=("sparql_stream",))
    sink = {"kind": "sparql", "update_url": f"{stand.url}/sparql", "auth": "sigv4", "region": "us-east-1"}
    path = config(tmp_path, stand, sink, limit=40, queue_size=2)
    daemon = DaemonProcess(path, exit_when_idle=False)
    wait_for(lambda: (status(daemon)["sources"][0]["position"] or [0])[0] > 20, 60, "progress")
    time.sleep(0.3)
    killed_at = status(daemon)["sources"][0]["position"]
    daemon.kill()
    assert stand.sparql_stream.last_event_id() > tuple(killed_at)  # the kill left work to do
    stand.faults.clear()
    final = DaemonProcess(path)
    assert final.wait(120) == 0, final.log_tail()
    assert_same(history.reference, set(stand.rdf_store.quads_for_pattern(None, None, None, None)))


def test_sparql_sink_errors_are_classified_and_unsigned_requests_refused(stand: NeptuneStand) -> None:
    """Neptune's JSON error codes and bare HTTP statuses map to the retry classes; without SigV4 the stand (like
    Neptune with IAM auth) answers 403, which is not retried and not dead-lettered."""
    from daemon.sinks.sparql import SparqlSink, results_rows, sparql_error

    sink = SparqlSink("s", update_url=f"{stand.url}/sparql")
    body = b'{"code": "ConcurrentModificationException", "detailedMessage": "retry"}'
    assert sink.classify(sparql_error(500, body, "application/json")).reason == "conflict"
    assert sink.classify(sparql_error(503, b"busy", "text/plain")).reason == "server_error"
    assert sink.classify(sparql_error(429, b"", "text/plain")).reason == "throttling"
    assert sink.classify(sparql_error(400, b"Parse error", "text/plain")).data_rejected
    document = {"head": {"vars": ["x", "y"]}, "results": {"bindings": [
        {"x": {"type": "literal", "value": "a", "xml:lang": "en"},
         "y": {"type": "literal", "value": "2", "datatype": "http://www.w3.org/2001/XMLSchema#integer"}},
        {"x": {"type": "uri", "value": "http://s"}}]}}  # fmt: skip
    assert results_rows(document) == [
        {"x": '"a"@en', "y": '"2"^^<http://www.w3.org/2001/XMLSchema#integer>'},
        {"x": "<http://s>", "y": None},
    ]

    async def unsigned() -> BaseException:
        await sink.start()
        try:
            await sink.execute("INSERT DATA", [{"quad": Quad(NamedNode("http://s"), NamedNode("http://p"),
                                                             NamedNode("http://o"))}])  # fmt: skip
        except Exception as exc:
            return exc
        finally:
            await sink.close()
        raise AssertionError("an unsigned update was accepted")

    refused = asyncio.run(unsigned())
    cls = sink.classify(refused)
    assert not cls.retryable and not cls.data_rejected and cls.reason == "access_denied"
    assert len(stand.rdf_store) == 0
