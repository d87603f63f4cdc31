"""The data directory: an unusable `data_dir` is a config error of `check-config` and `run`; one owner at a time
(the lock names its holder); a supervisor whose sink cannot start still shows the stored checkpoints and says
why nothing was applied."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.checkpoint import SQLiteCheckpointStore
from daemon.cli import _format_summary
from daemon.cli import main as cli_main
from daemon.config import load_config
from daemon.datadir import DataDirBusy, DataDirLock, check_data_dir
from daemon.observability import METRICS
from daemon.supervisor import Supervisor
from tests.stand.daemon_process import AWS_ENV, write_config
from tests.test_supervisor import free_port


def _config(tmp_path: Path, data_dir: Path, **daemon: object) -> Path:
    capture = tmp_path / "capture.jsonl"
    capture.touch()
    return write_config(
        tmp_path / "c.toml",
        data_dir=data_dir,
        source={"kind": "file", "path": str(capture)},
        sink={"kind": "falkordb"},
        daemon={"http_address": "", **daemon},
    )


def _unusable(tmp_path: Path) -> list[tuple[Path, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    return [(a_file, "exists and is not a directory"), (a_file / "sub", "not a directory")]


def test_check_config_refuses_an_unusable_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for data_dir, reason in _unusable(tmp_path):
        assert cli_main(["check-config", "--config", str(_config(tmp_path, data_dir))]) == 2
        err = capsys.readouterr().err
        assert "config error: daemon.data_dir: " in err and str(data_dir) in err and reason in err.lower(), err
    fine = tmp_path / "not-yet" / "data"
    assert cli_main(["check-config", "--config", str(_config(tmp_path, fine))]) == 0
    assert not fine.exists()  # check-config creates nothing


def test_run_refuses_an_unusable_data_dir_without_a_traceback(tmp_path: Path) -> None:
    for data_dir, reason in _unusable(tmp_path):
        config = _config(tmp_path, data_dir)
        result = subprocess.run(
            [sys.executable, "-m", "daemon", "run", "--config", str(config), "--exit-when-idle"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        err = result.stderr
        assert "config error: daemon.data_dir: " in err and str(data_dir) in err and reason in err.lower(), err
        assert "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_data_dir_is_reported(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    assert "cannot write" in (check_data_dir(locked, create=False) or "")
    assert "cannot write" in (check_data_dir(locked, create=True) or "")


def test_second_run_on_a_data_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with DataDirLock(data_dir, "a test holding it"):
        with pytest.raises(DataDirBusy, match=rf"{data_dir} is in use .* pid {os.getpid()} \(a test holding it\)"):
            DataDirLock(data_dir).acquire()
        result = subprocess.run(
            [sys.executable, "-m", "daemon", "run", "--config", str(_config(tmp_path, data_dir))],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 4, result.stderr
        assert str(data_dir) in result.stderr and f"pid {os.getpid()}" in result.stderr
    with DataDirLock(data_dir) as lock:  # released: free again
        assert lock.held and (data_dir / "daemon.lock").read_text().split()[0] == str(os.getpid())


async def test_checkpoints_are_shown_while_the_sink_cannot_start(tmp_path: Path, monkeypatch) -> None:
    """What the log's `stopped` line and the summary said when the embedded engine could not start in time:
    checkpoints null ("the store holds them") and "applied 0 changes (nothing new since the last checkpoint)".
    The positions are read before the sink starts, and the summary says the source never started."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    config = load_config(
        write_config(
            tmp_path / "c.toml",
            data_dir=tmp_path / "data",
            source={"kind": "neptune", "endpoint": "http://127.0.0.1:9", "region": "us-east-1"},
            sink={"kind": "falkordb", "url": f"redis://127.0.0.1:{free_port()}"},
            daemon={"restart_backoff_max_seconds": 0.2, "http_address": ""},
        )
    )
    store = SQLiteCheckpointStore(config.checkpoint_path)
    await store.save("main", "", (1234, 5))
    store.close()
    supervisor = Supervisor(config, exit_when_idle=True)
    restarts = METRICS.task_restarts.labels(source="main")
    before = restarts._value.get()
    run = asyncio.create_task(supervisor.run())
    while restarts._value.get() < before + 1:
        assert not run.done(), "the supervisor gave up instead of retrying"
        await asyncio.sleep(0.05)
    assert supervisor.status()["sources"][0]["position"] == [1234, 5]
    supervisor.request_drain()
    await asyncio.wait_for(run, 30)
    assert supervisor.summary is not None
    assert "never started" in supervisor.summary.failed["main"]
    text = _format_summary(supervisor.summary, "c.toml")
    assert "nothing new since the last checkpoint" not in text and "never started" in text
