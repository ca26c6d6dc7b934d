"""A real Prometheus server (Debian package `prometheus`) for tests, on 127.0.0.1, scraping every second
the targets listed in a file_sd file the tests rewrite; queried through its HTTP API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: uprobe_exporter
    scrape_interval: 1s
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise AssertionError("the Debian package 'prometheus' is not installed (.ci/run installs it)")
    return path


class PrometheusServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.targets = workdir / "targets.json"
        self.set_targets([])
        (workdir / "prometheus.yml").write_text(CONFIG.format(targets=self.targets))
        self.port = free_port()
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.enable-lifecycle"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def set_targets(self, targets: list[str], labels: dict[str, str] | None = None) -> None:
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets, "labels": labels or {}}]))
        tmp.replace(self.targets)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=promql)["result"]
        return result

    def wait_for(self, promql: str, check: Callable[[list[dict[str, Any]]], bool], timeout: float = 30) -> list[
            dict[str, Any]]:
        """Query until ``check(result)`` holds; fail with the last result."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if check(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{promql!r} never satisfied the check; last result: {result}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def scalar(result: list[dict[str, Any]]) -> float:
    """The value of a one-sample instant vector."""
    assert len(result) == 1, result
    return float(result[0]["value"][1])
