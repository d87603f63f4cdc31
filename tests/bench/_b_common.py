"""Helpers shared by the latency, memory and nodestream benchmarks: the daemon as a child process, its
metrics, histogram quantiles, RSS sampling and small formatting helpers."""

from __future__ import annotations

import math
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.stand.daemon_process import DaemonProcess


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_s(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank); nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


# ---------------------------------------------------------------------------------------------- metrics


def parse_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric name in Prometheus text format: (labels, value)."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        labels = {}
        for part in label_text.rstrip("}").split(","):
            if "=" in part:
                key, _, raw = part.partition("=")
                labels[key] = raw.strip('"')
        out.append((labels, float(value)))
    return out


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for got, v in parse_samples(text, name) if all(got.get(k) == w for k, w in labels.items()))


def histogram_buckets(text: str, name: str, **labels: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a histogram, sorted by bound (+Inf last)."""
    buckets: dict[float, float] = {}
    for got, value in parse_samples(text, name + "_bucket"):
        if all(got.get(k) == w for k, w in labels.items()):
            bound = math.inf if got["le"] == "+Inf" else float(got["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return sorted(buckets.items())


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """What Prometheus' histogram_quantile() computes: linear interpolation inside the bucket holding rank q."""
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return math.nan


# ---------------------------------------------------------------------------------------------- daemon


_PORTS: dict[int, int] = {}  # daemon pid -> HTTP port (DaemonProcess.http_port re-reads the whole log)


def get(daemon: DaemonProcess, path: str, timeout: float = 5) -> bytes:
    port = _PORTS.get(daemon.proc.pid)
    if port is None:
        port = _PORTS[daemon.proc.pid] = daemon.http_port()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"GET {path} answered {exc.code}: {exc.read()[:300]!r}") from None


def status(daemon: DaemonProcess) -> dict[str, Any]:
    return orjson.loads(get(daemon, "/status"))


def wait_ready(daemon: DaemonProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited early; log:\n{daemon.log_tail()}")
        try:
            code, _ = daemon.get("/readyz", timeout=2)
            if code == 200:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"daemon not ready after {timeout} s; log:\n{daemon.log_tail()}")


def source_status(daemon: DaemonProcess) -> dict[str, Any]:
    """The /status entry of the only source."""
    body = status(daemon)
    sources = body.get("sources", body) if isinstance(body, dict) else body
    if isinstance(sources, dict):
        sources = list(sources.values())
    return sources[0]


def stop_daemon(daemon: DaemonProcess, timeout: float = 60) -> int:
    if daemon.proc.poll() is None:
        daemon.terminate()
    return daemon.wait(timeout)


# ---------------------------------------------------------------------------------------------- memory


@dataclass
class RssSampler:
    """Samples the resident set size of a process (and its children) every `interval` seconds."""

    pid: int
    interval: float = 0.5
    include_children: bool = True
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)
    marks: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        import psutil

        self._process = psutil.Process(self.pid)
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def mark(self, what: str) -> None:
        self.marks.append((self.elapsed(), what))

    def rss_mb(self) -> float:
        import psutil

        total = self._process.memory_info().rss
        if self.include_children:
            for child in self._process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
        return total / 1e6

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.samples.append((self.elapsed(), self.rss_mb()))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = 0.0, end: float = math.inf) -> float:
        window = [mb for t, mb in self.samples if start <= t <= end]
        return max(window) if window else math.nan


def plot_path(name: str) -> Path:
    from tests.bench.report import PLOTS

    PLOTS.mkdir(parents=True, exist_ok=True)
    return PLOTS / name


def engine_db(daemon: DaemonProcess, sink: str = "target") -> Any:
    """A FalkorDB client on the running daemon's embedded engine (found through the state file its owner
    writes in the data directory; `tests.stand.harness.config_for` puts the data directory beside the config)."""
    import falkordb

    from daemon.engine import read_engine_state

    state = read_engine_state(daemon.config.parent / "data" / "falkordb" / sink)
    if state is None:
        raise AssertionError(f"no running engine for sink {sink!r} of the daemon with config {daemon.config}")
    return falkordb.FalkorDB(host="127.0.0.1", port=state.port, password=state.password)


def read_embedded_replica(daemon: DaemonProcess, graph: str = "replica") -> Any:
    """Read the daemon's embedded FalkorDB graph while the daemon runs (reading it after exit would replay the
    engine's whole append-only file first)."""

    from tests.stand.comparator import read_falkordb_graph

    return read_falkordb_graph(engine_db(daemon).select_graph(graph))
