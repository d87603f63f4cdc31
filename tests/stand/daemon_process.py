"""Run the real `graph-replicator` command as a child process against the test stand.

Tests write a TOML config naming the stand's endpoints, start the daemon exactly as a user would
(`python -m daemon run --config ...`), and may SIGKILL or SIGTERM it. Credentials are dummy values: the stand
checks that requests are SigV4-signed, not by whom.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return orjson.dumps(str(value)).decode()


def write_config(
    path: Path,
    *,
    data_dir: Path,
    source: dict[str, Any],
    sink: dict[str, Any],
    daemon: dict[str, Any] | None = None,
) -> Path:
    """A one-source, one-sink config file (sink called "target")."""
    settings = {"data_dir": str(data_dir), "http_address": "127.0.0.1:0", "log_format": "json", **(daemon or {})}
    lines = ["[daemon]"] + [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    lines += ["", "[[sources]]", 'name = "main"', 'sink = "target"']
    lines += [f"{k} = {toml_value(v)}" for k, v in source.items()]
    lines += ["", "[sinks.target]"] + [f"{k} = {toml_value(v)}" for k, v in sink.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class DaemonProcess:
    """One run of the daemon; logs go to a file next to the config."""

    def __init__(self, config: Path, *, exit_when_idle: bool = True, extra_env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = config.with_suffix(f".{time.monotonic_ns()}.log")
        args = [sys.executable, "-m", "daemon", "run", "--config", str(config)]
        if exit_when_idle:
            args.append("--exit-when-idle")
        env = {**os.environ, **AWS_ENV, **(extra_env or {})}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not finish in {timeout} s; log:\n{self.log_tail()}") from None
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"raw": line.decode(errors="replace")})
        return out

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def http_port(self, timeout: float = 30) -> int:
        """The port the daemon's HTTP server bound (it logs it at start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("event") == "http server listening":
                    return int(line["address"].rsplit(":", 1)[1])
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early; log:\n{self.log_tail()}")
            time.sleep(0.05)
        raise AssertionError(f"daemon never logged its HTTP address; log:\n{self.log_tail()}")

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.http_port()}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
