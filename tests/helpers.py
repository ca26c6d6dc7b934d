"""Test helpers: compile C targets, write TOML configs, run the exporter as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# tests/vm/run-kernels runs kernel tests under QEMU's TCG emulation (UE_TEST_EMULATED=1) on a busy host, where a
# virtual CPU stalls for tens of milliseconds between two instructions (seen: 37 ms between two probes of one
# hit). Bounds on the time between two events, and only those, are multiplied by this there.
TIME_SLACK = 500 if os.environ.get("UE_TEST_EMULATED") else 1
TARGETS = ROOT / "tests" / "targets"
READY_TEXT = "; reading"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def toml_dumps(data: Mapping[str, Any]) -> str:
    """Enough TOML for our configs: tables of scalars, one nested level, arrays of tables."""
    out: list[str] = []

    def table(name: str, body: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not (isinstance(v, Mapping) and k not in {"args", "return_args"})}
        out.append(f"[{name}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
        for k, v in body.items():
            if k not in scalars:
                table(f"{name}.{k}", v)

    for key, value in data.items():
        if key == "probes":
            for probe in value:
                out.append("[[probes]]")
                out.extend(f"{k} = {toml_value(v)}" for k, v in probe.items())
        else:
            table(key, value)
    return "\n".join(out) + "\n"


def build_config(group: str, probes: list[dict[str, Any]], output: Path, **sections: Any) -> dict[str, Any]:
    """A test configuration: our unique group and instance, JSON to a file, metrics off unless asked."""
    exporter = {"group": group, "instance": group, "buffer_size_kb": 2048}
    exporter.update(sections.pop("exporter", {}))
    data: dict[str, Any] = {
        "exporter": exporter,
        "output": {"jsonl": {"path": str(output), **sections.pop("jsonl", {})}},
        "metrics": sections.pop("metrics", {"enabled": False}),
        "probes": probes,
    }
    data.update(sections)
    return data


def compile_c(source: Path, out: Path, *flags: str) -> Path:
    if not out.exists():
        subprocess.run(["gcc", "-O0", "-g", "-fno-omit-frame-pointer", "-pthread", *flags, "-o", str(out),
                        str(source)], check=True)
    return out


def compile_go(source: Path, out: Path, *flags: str) -> Path:
    """``go build`` with the default flags (plus ``flags``), its build cache beside ``out``."""
    if not out.exists():
        env = {**os.environ, "GOCACHE": str(out.parent / "gocache")}
        subprocess.run(["go", "build", *flags, "-o", str(out), str(source)], check=True, env=env, timeout=300)
    return out


def run_cli(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "uprobe_exporter", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False, **kwargs)


class ExporterProcess:
    """``uprobe-exporter run`` as a child process; stderr is collected, readiness awaited."""

    def __init__(self, config: Path, *, extra_args: tuple[str, ...] = (), stdout: Any = subprocess.DEVNULL,
                 preexec: Callable[[], None] | None = None, argv: list[str] | None = None) -> None:
        cmd = argv or [sys.executable, "-m", "uprobe_exporter", "run", "--config", str(config), *extra_args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=preexec)
        self.stderr_lines: list[str] = []
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if READY_TEXT in line:
                self.ready.set()

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None:
                self._thread.join(2)
                raise AssertionError(f"exporter exited with {self.proc.returncode}:\n{self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"exporter not ready after {timeout} s:\n{self.stderr}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> tuple[int, float]:
        """Send ``sig``; return the exit code and the seconds it took to exit."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        elapsed = time.monotonic() - start
        self._thread.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return rc, elapsed

    def __enter__(self) -> ExporterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_lines(path: Path, count: int, timeout: float = 20) -> int:
    """Wait until ``path`` holds at least ``count`` lines; returns how many it holds."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n = path.read_bytes().count(b"\n") if path.exists() else 0
        if n >= count:
            return n
        time.sleep(0.05)
    return n
