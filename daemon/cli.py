"""The `graph-replicator` command: run, check-config, status, query, capture, bootstrap."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from daemon import __version__
from daemon.config import (
    Config,
    ConfigError,
    NeptuneSourceConfig,
    NeptuneSparqlSourceConfig,
    format_resolved,
    load_config,
)

if TYPE_CHECKING:
    from daemon.supervisor import Summary

EXIT_CONFIG = 2
EXIT_BUSY = 4  # another graph-replicator process owns the data directory
CONFIG_HELP = "the daemon's TOML config file"
LOOK_STATEMENT = "MATCH (n) RETURN n LIMIT 5"  # the query the run summary suggests
LOOK_SPARQL = "SELECT * WHERE { GRAPH ?g { ?s ?p ?o } } LIMIT 5"  # the same for an RDF target


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _data_dir_problem(config: Config, *, create: bool) -> bool:
    """Print why `daemon.data_dir` is unusable (as a config error); True if it is."""
    from daemon.datadir import DATA_DIR_KEY, check_data_dir

    reason = check_data_dir(config.daemon.resolved_data_dir, create=create)
    if reason is not None:
        print(ConfigError([(DATA_DIR_KEY, reason)]), file=sys.stderr)
    return reason is not None


def _path_problems(config: Config, config_path: str) -> tuple[list[tuple[str, str]], list[str]]:
    """What `run` would trip on in the file system, as (key, reason) problems, and notes on relative paths:
    they resolve against the current directory, not the config file's."""
    from daemon.config import FileSourceConfig

    cwd = Path.cwd()
    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    paths: list[tuple[str, str | None]] = [
        ("daemon.data_dir", config.daemon.data_dir),
        ("daemon.dead_letter_path", config.daemon.dead_letter_path),
        ("checkpoint.path", getattr(config.checkpoint, "path", None)),
    ]
    for i, source in enumerate(config.sources):
        if isinstance(source, FileSourceConfig):
            paths.append((f"sources[{i}].path", source.path))
            resolved = Path(source.path).expanduser().absolute()
            if not resolved.exists():
                relative = "" if Path(source.path).expanduser().is_absolute() else f" (relative to {cwd})"
                problems.append(
                    (f"sources[{i}].path", f"{resolved} does not exist{relative}: source {source.name!r} cannot read")
                )
    config_dir = Path(config_path).absolute().parent
    for key, value in paths:
        if value is not None and not Path(value).expanduser().is_absolute():
            resolved = Path(value).expanduser().absolute()
            note = f"note: {key} = {value!r} is relative: it resolves against the current directory, to {resolved}"
            if config_dir != cwd:
                note += f" (not against the config file's directory {config_dir})"
            notes.append(note)
    return problems, notes


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None or _data_dir_problem(config, create=False):
        return EXIT_CONFIG
    problems, notes = _path_problems(config, args.config)
    for note in notes:
        print(note, file=sys.stderr)
    if problems:
        print(ConfigError(problems), file=sys.stderr)
        return EXIT_CONFIG
    print(format_resolved(config), end="")
    print(f"# {args.config}: OK ({len(config.sources)} source(s), {len(config.sinks)} sink(s))", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None or _data_dir_problem(config, create=True):
        return EXIT_CONFIG
    from daemon.datadir import DataDirBusy
    from daemon.observability import configure_logging
    from daemon.supervisor import Supervisor

    configure_logging(args.log_level or config.daemon.log_level, config.daemon.log_format)

    async def main() -> int:
        try:
            supervisor = Supervisor(config, exit_when_idle=args.exit_when_idle)
        except DataDirBusy as exc:
            print(f"graph-replicator run: refused: {exc}", file=sys.stderr)
            return EXIT_BUSY
        code = await supervisor.run()
        if supervisor.fatal is not None:
            print(f"graph-replicator run: {supervisor.fatal}", file=sys.stderr)
        if supervisor.summary is not None:
            print(_format_summary(supervisor.summary, args.config))
        return code

    return _run_loop(main())


def _format_summary(summary: Summary, config_path: str) -> str:
    """The few lines `run --exit-when-idle` ends with: what was applied, what the targets hold, how to look."""
    applied = f"applied {summary.changes_applied:,} changes in {summary.seconds:.1f} s"
    if summary.changes_applied:
        applied += f" ({summary.changes_applied / max(summary.seconds, 1e-6):,.0f} changes/s)"
    elif not summary.failed and not summary.dead_letters:
        applied += " (nothing new since the last checkpoint)"
    lines = [applied] + [f"source {name!r} stopped: {why}" for name, why in summary.failed.items()]
    if summary.dead_letters:
        lines.append(f"dead-lettered {summary.dead_letters:,} changes or records: see {summary.dead_letter_file}")
    for name, counts in summary.graphs.items():
        held = "could not be counted" if counts is None else f"holds {counts[0]:,} vertices and {counts[1]:,} edges"
        lines.append(f"target {name!r} {held}")
    for name, count in summary.quads.items():
        lines.append(f"target {name!r} holds {count:,} quads")
    targets = [*summary.graphs, *summary.quads]
    if not targets:  # sources that feed event sinks only: nothing to query
        lines.append(f"event sinks only; their checkpoints:  {self_command()} checkpoint show --config "
                     f"{shlex.quote(config_path)}")  # fmt: skip
        return "\n".join(lines)
    sink = "" if len(targets) < 2 else f" --sink {shlex.quote(targets[0])}"
    look = LOOK_STATEMENT if summary.graphs or not summary.quads else LOOK_SPARQL
    lines.append(f"look at it:  {self_command()} query --config {shlex.quote(config_path)}{sink} {shlex.quote(look)}")
    return "\n".join(lines)


def self_command(argv0: str | None = None) -> str:
    """This command as the user can type it again from the same directory: bare `graph-replicator` when that
    name on PATH is this very script, else the path it was started by (`.venv/bin/graph-replicator`), else
    `python -m daemon` with this interpreter."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if Path(argv0).name == "graph-replicator":
        on_path = shutil.which("graph-replicator")
        if on_path is not None and Path(on_path).resolve() == Path(argv0).resolve():
            return "graph-replicator"
        return shlex.quote(argv0 if "/" in argv0 else "./" + argv0)
    return f"{shlex.quote(sys.executable)} -m daemon"


# The collector's young generation is collected every 50,000 net allocations instead of 700: a window of
# stream records is hundreds of thousands of small dicts that live until the window is applied, and the default
# threshold rescans them over and over (python -m tests.bench --only pipeline_cost: 8.8 -> 7.1 us a Neptune
# change, 37.9 -> 35.8 us a DynamoDB one). Objects alive at start are frozen out of its sight.
GC_THRESHOLDS = (50_000, 20, 10)


def _run_loop(coro: Any) -> int:
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps odd platforms working
        return asyncio.run(coro)
    return uvloop.run(coro)


DEFAULT_STATUS_URL = "http://127.0.0.1:9464"


def status_url(args: argparse.Namespace) -> str | None:
    """The /status URL from `--url` (a scheme is optional) or the config's `daemon.http_address`; None (reason
    printed) when the config names no reachable address."""
    if args.url:
        url = args.url if "://" in args.url else "http://" + args.url
        return url.rstrip("/") + "/status"
    if args.config is None:
        return DEFAULT_STATUS_URL + "/status"
    config = _load(args.config)
    if config is None:
        return None
    bind = config.daemon.http_bind
    if bind is None:
        print(f"{args.config}: daemon.http_address is empty: that daemon serves no /status", file=sys.stderr)
        return None
    host, port = bind
    if port == 0:
        print(
            f"{args.config}: daemon.http_address has port 0 (a free port picked at start): pass --url with the "
            'port the daemon logged ("http server listening")',
            file=sys.stderr,
        )
        return None
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)  # a wildcard bind: ask locally
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/status"


def cmd_status(args: argparse.Namespace) -> int:
    import urllib.error  # here, not at the top: `run` does not need http.client and email
    import urllib.request

    url = status_url(args)
    if url is None:
        return EXIT_CONFIG
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = orjson.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        print(f"cannot read {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
        return 0
    reasons = f"  ({'; '.join(status['reasons'])})" if status["reasons"] else ""
    print(f"ready: {'yes' if status['ready'] else 'NO'}{reasons}")
    print(f"uptime: {_duration(status['uptime_seconds'])}   dead letters: {status['dead_letters']}")
    header = ("source", "state", "position", "caught up", "lag", "applied", "sink", "sink ok")
    rows = [header] + [
        (
            s["source"],
            s["state"],
            _position(s["position"]),
            "yes" if s["caught_up"] else "no",
            "caught up" if s["caught_up"] else _duration(s["lag_seconds"]),
            f"{s['changes_applied']:,}",
            s["sink"] or "(event sinks only)",
            "yes" if s["sink_healthy"] else "NO",
        )
        for s in status["sources"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for s in status["sources"]:
        if isinstance(s["position"], dict):
            print(f"\n{s['source']} positions:")
            for partition, position in s["position"].items():
                print(f"  {partition}  {_position(position)}")
    for s in status["sources"]:
        if s.get("event_sinks"):
            print(f"\n{s['source']} event sinks:")
            _print_event_sinks(s["event_sinks"])
    for s in status["sources"]:
        if s.get("leases"):
            print(f"\n{s['source']} leases (this instance is {s['owner_id']}):")
            _print_leases(s["leases"])
    for s in status["sources"]:
        if s.get("error"):
            print(f"\n{s['source']}: {s['error']}")
    return 0


def _print_event_sinks(lanes: list[dict[str, Any]]) -> None:
    """One line an event sink: state (ok / retrying / down), checkpoint, lag, buffer and counts; then why a
    failing one fails."""
    header = ("sink", "kind", "state", "position", "lag", "buffered", "sent", "retried", "dead-lettered")
    rows = [header] + [
        (
            lane["sink"],
            lane["kind"],
            lane["state"],
            _position(lane["position"][""] if list(lane["position"] or {}) == [""] else lane["position"]),
            "caught up" if lane["caught_up"] else _duration(lane["lag_seconds"]),
            f"{lane['buffered_events']:,} ({lane['buffered_batches']} batches)",
            f"{lane['events_sent']:,}",
            f"{lane['events_retried']:,}",
            f"{lane['events_dead_lettered']:,}",
        )
        for lane in lanes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for lane in lanes:
        if lane["failing_reason"]:
            print(f"  {lane['sink']}: {lane['failing_reason']}")


def _print_leases(leases: list[dict[str, Any]]) -> None:
    """One line a partition: its owner (`me` for this instance, `-` for nobody), checkpoint, pending steal;
    finished shards (read to their end) are only counted."""
    finished = [lease for lease in leases if lease["position"] == ["SHARD_END"]]
    rows = [
        (
            lease["partition"] or "(stream)",
            "me" if lease["held_by_me"] else lease["owner"] or "-",
            "/".join(map(str, lease["position"])) if lease["position"] else "-",
            f"asked for by {lease['pending_owner']}" if lease["pending_owner"] else "",
        )
        for lease in leases
        if lease not in finished
    ]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, [*widths, 0], strict=True)).rstrip())
    if finished:
        print(f"  ({len(finished)} finished shards)")


def _position(position: list[Any] | dict[str, Any] | None) -> str:
    """A checkpoint for the table: commit/op (or a sequence number); several partitions are counted."""
    if not position:
        return "-"
    if isinstance(position, dict):
        return f"{len(position)} shards"
    return "/".join(map(str, position))


def _duration(seconds: float) -> str:
    """A lag or uptime an operator reads at a glance: 0s, 4.2s, 5m 02s, 3h 12m, 41d 6h."""
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def cmd_query(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from daemon.config import EVENT_SINK_KINDS
    from daemon.supervisor import build_sink

    graphs = [n for n, c in config.sinks.items() if c.kind not in EVENT_SINK_KINDS]  # event sinks hold nothing
    name = args.sink or (graphs[0] if graphs else None)
    if name is None:
        print(f"no graph sink to query: every sink of this config is an event sink ({', '.join(config.sinks)})",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    if name not in graphs:
        why = "is an event sink: it holds no graph" if name in config.sinks else "does not exist"
        print(f"sink {name!r} {why} (graph sinks: {', '.join(graphs) or 'none'})", file=sys.stderr)
        return EXIT_CONFIG
    sink_cfg = config.sinks[name]
    lock = None
    if getattr(sink_cfg, "embedded", False):
        # The embedded engine lives in the data directory: start one only if no daemon owns it, else use the
        # daemon's engine read-only (stopping or restarting it would stop the daemon's writes).
        from daemon.datadir import DataDirBusy, DataDirError, DataDirLock

        try:
            lock = DataDirLock(config.daemon.resolved_data_dir, "graph-replicator query").acquire()
        except DataDirBusy as busy:
            if sink_cfg.kind == "oxigraph":  # RocksDB lets one process open the store; reading beside a writer is UB
                print(
                    f"graph-replicator query: {busy}; the embedded Oxigraph store of sink {name!r} can be opened by "
                    "one process at a time: stop the daemon to query it, or replicate into a SPARQL server "
                    '(kind = "sparql") to query it live (docs/rdf.md)',
                    file=sys.stderr,
                )
                return 1
            sink = _attached_sink(name, sink_cfg, config, busy)
            if sink is None:
                return 1
        except DataDirError as exc:
            print(ConfigError([("daemon.data_dir", exc.reason)]), file=sys.stderr)
            return EXIT_CONFIG
        else:
            sink = build_sink(name, sink_cfg, config)
    else:
        sink = build_sink(name, sink_cfg, config)

    from daemon.query_format import Plain, write_rows

    plain = Plain(getattr(sink_cfg, "id_property", "~id"), getattr(sink_cfg, "base_label", None))

    async def main() -> list[dict[str, Any]]:
        await sink.start()
        try:
            return [plain.row(row) for row in await sink.query(args.statement)]
        finally:
            await sink.close()

    try:
        write_rows(asyncio.run(main()), args.format, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")
    except Exception as exc:
        refused = _query_refusal(exc)
        if refused is None:
            raise
        code, text = refused
        print(f"query failed: {text}", file=sys.stderr)
        return code
    finally:
        if lock is not None:
            lock.release()
    return 0


_SYNTAX_MARKERS = ("invalid input", "syntax", "malformed", "unknown function", "not defined", "parse")


def _query_refusal(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for a statement the target refused: 2 for a statement that does not parse or
    names what does not exist, 1 for any other refusal (a write on a read-only engine); None for other failures."""
    import redis.exceptions

    from daemon.aws import error_code

    if isinstance(exc, SyntaxError):  # pyoxigraph: a SPARQL statement that does not parse
        return EXIT_CONFIG, f"SPARQL syntax error: {' '.join(str(exc).split())}"
    if isinstance(exc, redis.exceptions.ResponseError):
        text = " ".join(str(exc).split())
    elif code := error_code(exc):
        text = f"{code}: {' '.join(str(exc).split())}"
    else:
        return None
    syntax = any(marker in text.lower() for marker in _SYNTAX_MARKERS)
    return (EXIT_CONFIG if syntax else 1), text


def _attached_sink(name: str, sink_cfg: Any, config: Config, busy: Exception) -> Any:
    """A read-only sink on the running daemon's engine for sink `name`, or None (reason printed)."""
    from daemon.engine import read_engine_state
    from daemon.sinks.falkordb import FalkorDBSink

    engine_dir = config.daemon.resolved_data_dir / "falkordb" / name
    state = read_engine_state(engine_dir)
    if state is None:
        print(
            f"graph-replicator query: {busy}; its engine for sink {name!r} is not running yet "
            f"(no {engine_dir / 'engine.json'}): try again once the daemon is ready",
            file=sys.stderr,
        )
        return None
    print(f"# read-only, on the running daemon's engine (pid {state.pid}, port {state.port})", file=sys.stderr)
    return FalkorDBSink(
        name,
        url=state.url,
        password=state.password,
        graph=sink_cfg.graph,
        id_property=sink_cfg.id_property,
        base_label=sink_cfg.base_label,
        timeout_seconds=sink_cfg.request_timeout_seconds,
        concurrency=1,
        read_only=True,
    )


def cmd_capture(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from daemon.capture import Capture

    source = next((s for s in config.sources if s.name == args.source), None)
    if not isinstance(source, NeptuneSourceConfig | NeptuneSparqlSourceConfig):
        streams = (NeptuneSourceConfig, NeptuneSparqlSourceConfig)
        neptune = ", ".join(s.name for s in config.sources if isinstance(s, streams)) or "none"
        print(f"no neptune source named {args.source!r} in {args.config} (neptune sources: {neptune})", file=sys.stderr)
        return EXIT_CONFIG
    capture = Capture(
        source,
        Path(args.output),
        max_records=args.max_records,
        until_caught_up=args.until_caught_up,
        progress=sys.stderr,
    )
    return _run_loop(capture.main())


def cmd_bootstrap(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None or _data_dir_problem(config, create=True):
        return EXIT_CONFIG
    from daemon.datadir import DataDirBusy, DataDirLock

    # A bootstrap writes the checkpoint store and may start the embedded engine: never beside a running daemon.
    try:
        lock = DataDirLock(config.daemon.resolved_data_dir, "graph-replicator bootstrap").acquire()
    except DataDirBusy as exc:
        print(f"graph-replicator bootstrap: refused: {exc}", file=sys.stderr)
        return EXIT_BUSY
    try:
        return _bootstrap(args, config)
    finally:
        lock.release()


def _bootstrap(args: argparse.Namespace, config: Config) -> int:
    from daemon.bootstrap import Bootstrap, BootstrapError
    from daemon.bootstrap.runner import bootstrap_error_text
    from daemon.http_server import HttpServer
    from daemon.observability import METRICS, configure_logging

    configure_logging(config.daemon.log_level, config.daemon.log_format)
    source = args.source
    if source is None:
        if len(config.sources) != 1:
            names = ", ".join(s.name for s in config.sources)
            print(f"{args.config} has several sources ({names}): name one with --source", file=sys.stderr)
            return EXIT_CONFIG
        source = config.sources[0].name

    async def main() -> int:
        http = None
        if args.metrics_address:
            http = HttpServer(args.metrics_address, lambda: (True, []), lambda: {}, METRICS.registry)
            await http.start()
        try:
            bootstrap = Bootstrap(config, source, force=args.force, allow_non_empty_target=args.allow_non_empty_target)
            result = await bootstrap.run()
        except BootstrapError as exc:
            print("\n" + bootstrap_error_text(exc), file=sys.stderr)
            return exc.exit_code
        except Exception as exc:
            print("\n" + bootstrap_error_text(exc), file=sys.stderr)
            return 1
        finally:
            if http is not None:
                await http.stop()
        print(result.summary())
        return 0

    return _run_loop(main())


def cmd_checkpoint(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from daemon.checkpoint_admin import AdminError, Request, run
    from daemon.observability import configure_logging

    configure_logging(config.daemon.log_level, config.daemon.log_format)
    request = Request(
        action=args.action,
        source=args.source,
        partition=args.partition,
        position=getattr(args, "position", None),
        commits=getattr(args, "commits", None),
        yes=getattr(args, "yes", False),
        force=getattr(args, "force", False),
        fmt=getattr(args, "format", "table"),
    )
    try:
        return asyncio.run(run(config, request, sys.stdout))
    except AdminError as exc:
        print(f"graph-replicator checkpoint {args.action}: {exc}", file=sys.stderr)
        return exc.exit_code


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"should be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graph-replicator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"graph-replicator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="replicate continuously")
    run.add_argument("--config", required=True, help=CONFIG_HELP)
    run.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="least severe log level (overrides daemon.log_level)",
    )
    run.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit 0 once every source is caught up and everything is applied and checkpointed",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config and print it resolved, secrets masked")
    check.add_argument("--config", required=True, help=CONFIG_HELP)
    check.set_defaults(func=cmd_check_config)

    status = sub.add_parser("status", help="show a running daemon's /status")
    where = status.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        help=f"the daemon's HTTP address, http://host:port or host:port (default: {DEFAULT_STATUS_URL}, or the "
        "config's daemon.http_address with --config)",
    )
    where.add_argument("--config", help=CONFIG_HELP + "; its daemon.http_address is asked")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(func=cmd_status)

    query = sub.add_parser(
        "query", help="run an openCypher statement (SPARQL on an RDF sink) on a configured sink and print rows"
    )
    query.add_argument("--config", required=True, help=CONFIG_HELP)
    query.add_argument("--sink", help="graph sink name (default: the first graph sink)")
    query.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="table (default), json (one JSON object per row) or csv; nodes print as {id, labels, properties}, "
        "edges as {id, type, properties}",
    )
    query.add_argument("statement")
    query.set_defaults(func=cmd_query)

    checkpoint = sub.add_parser(
        "checkpoint",
        help="show or move the stored positions of the config's sources (docs/operations.md, Checkpoints)",
    )
    actions = checkpoint.add_subparsers(dest="action", required=True)
    shown = {
        "show": "print each source's partitions and positions (and the leases of the DynamoDB store)",
        "set": "set one partition's position; the next run continues after it",
        "rewind": "move a Neptune or file source's position back by a number of commits",
        "reset": "delete the source's stored positions; the next run reads from its `start`",
    }
    for action, text in shown.items():
        cmd = actions.add_parser(action, help=text, description=text)
        cmd.add_argument("--config", required=True, help=CONFIG_HELP)
        cmd.add_argument(
            "--source",
            help="name of the [[sources]] entry, or SOURCE@SINK for one of its event sinks (default: every source "
            "for show, else the only one)",
        )
        cmd.add_argument(
            "--partition", help="a DynamoDB source's shard id (Neptune and file sources have one partition)"
        )
        if action == "show":
            cmd.add_argument(
                "--format", choices=("table", "json"), default="table", help="output format (default: table)"
            )
        else:
            cmd.add_argument(
                "--force",
                action="store_true",
                help="DynamoDB store: do not wait lease_duration_seconds to see whether owned leases are alive",
            )
        if action == "set":
            cmd.add_argument(
                "position",
                help='neptune/file: commitNum[:opNum] ("1200:3" = continue after op 3 of commit 1200, "1200" = from '
                "the start of commit 1200); dynamodb: a sequence number, TRIM_HORIZON or SHARD_END",
            )
        if action == "rewind":
            cmd.add_argument(
                "--commits", type=_positive, required=True, help="read this many of the last applied commits again"
            )
        if action == "reset":
            cmd.add_argument("--yes", action="store_true", help="really delete the positions")
        cmd.set_defaults(func=cmd_checkpoint)

    capture = sub.add_parser(
        "capture",
        help="copy a Neptune stream into a JSON-lines file (gzip if it ends in .gz) that a file source replays",
    )
    capture.add_argument("--config", required=True, help=CONFIG_HELP)
    capture.add_argument("--source", required=True, help="name of a neptune [[sources]] entry to read")
    capture.add_argument("--output", required=True, help="file to write; .gz = gzip")
    capture.add_argument("--max-records", type=_positive, help="stop after this many records")
    capture.add_argument(
        "--until-caught-up", action="store_true", help="stop at the head of the stream instead of waiting for more"
    )
    capture.set_defaults(func=cmd_capture)

    bootstrap = sub.add_parser(
        "bootstrap",
        help="copy a source's current contents into its target and record where `run` continues (docs/bootstrap.md)",
    )
    bootstrap.add_argument("--config", required=True, help=CONFIG_HELP)
    bootstrap.add_argument("--source", help="name of the [[sources]] entry (default: the only one)")
    bootstrap.add_argument(
        "--force",
        action="store_true",
        help="bootstrap a source that has a checkpoint (replaced on success), or whose leases a live instance holds "
        "(DynamoDB store: taken from it at the hand-off)",
    )
    bootstrap.add_argument(
        "--allow-non-empty-target",
        action="store_true",
        help="copy into a target that already holds data (elements the source lacks are kept)",
    )
    bootstrap.add_argument("--metrics-address", help='serve /metrics on "host:port" while it runs')
    bootstrap.set_defaults(func=cmd_bootstrap)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
