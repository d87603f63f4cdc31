"""Screenshots of the status page and the graph view for the docs (docs/images/), from a real daemon.

    .venv/bin/python -m tests.stand.screenshots [--out docs/images]

The daemon follows the Neptune-compatible stand's stream, which holds the shipped social sample
(config/samples/social-history.jsonl.gz) re-dated to the last ten minutes and is read slowly (every stream read
delayed 0.3-1 s), into the embedded FalkorDB engine; the status page is shot once the source has caught up, so
that its sparkline shows the lag falling, and the graph view on `person-1`. Needs Debian's `chromium` and the
`playwright` package (the [test] extra); takes about a minute.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from tests.stand.daemon_process import AWS_ENV, toml_value
from tests.stand.harness import wait_for
from tests.stand.live_daemon import LiveDaemon
from tests.stand.neptune_endpoint import NeptuneStand

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "config" / "samples" / "social-history.jsonl.gz"


def load_recent_sample(stand: NeptuneStand, span_seconds: float = 600.0) -> int:
    """Append the sample's commits to the stand's stream, spread over the last `span_seconds`; their number."""
    records = [orjson.loads(line) for line in gzip.decompress(SAMPLE.read_bytes()).splitlines()]
    commits = [list(group) for _, group in itertools.groupby(records, key=lambda r: r["eventId"]["commitNum"])]
    now_ms = time.time() * 1000
    for index, commit in enumerate(commits):
        stamp = int(now_ms - span_seconds * 1000 * (1 - index / len(commits)))
        stand.stream.append_commit([{"op": r["op"], "data": r["data"]} for r in commit], stamp)
    return len(commits)


def write_config(work: Path, stand: NeptuneStand) -> Path:
    source: dict[str, Any] = {
        "name": "social",
        "kind": "neptune",
        "sink": "replica",
        "endpoint": stand.url,
        "region": "us-east-1",
        "limit": 100,
        "poll_interval_max_seconds": 0.5,
    }
    lines = ["[daemon]", f"data_dir = {toml_value(str(work / 'data'))}", 'http_address = "127.0.0.1:0"']
    lines += ["", "[[sources]]", *(f"{k} = {toml_value(v)}" for k, v in source.items())]
    lines += ["", "[sinks.replica]", 'kind = "falkordb"', 'graph = "social"']
    path = work / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNG files")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    os.environ.update(AWS_ENV)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp, NeptuneStand() as stand:
        load_recent_sample(stand)
        stand.faults.configure(rate=1.0, kinds=["slow"], seed=1, paths=("stream",))
        daemon = LiveDaemon(write_config(Path(tmp), stand), history_interval=1.0, history_window=300.0).start()
        try:
            daemon.wait_caught_up(180)
            stand.faults.clear()
            time.sleep(4)  # a few caught-up samples after the fall
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=chromium, args=["--no-sandbox"] if os.geteuid() == 0 else []
                )
                page = browser.new_page(viewport={"width": 1280, "height": 400})
                page.goto(daemon.url + "/")
                page.wait_for_function("() => Number(document.body.dataset.refreshes || 0) >= 1")
                page.screenshot(path=str(args.out / "status-page.png"), full_page=True)  # as tall as its content
                page = browser.new_page(viewport={"width": 1280, "height": 760})
                page.goto(daemon.url + "/graph?id=person-1")
                page.wait_for_function("() => document.body.dataset.state === 'drawn'")
                wait_for(lambda: page.evaluate("document.body.dataset.nodes") is not None, 10, "the drawing")
                page.screenshot(path=str(args.out / "graph-view.png"))
                browser.close()
        finally:
            daemon.stop()
    for name in ("status-page.png", "graph-view.png"):
        path = args.out / name
        print(f"{path}  {path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
