"""Go programs: recognised by their ELF facts; a uretprobe on one is refused (it would crash the
program: a uretprobe's return address confuses Go's stack walker); an entry probe records every call
the program itself counts, on the real kernel."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ExporterProcess, build_config, read_jsonl, run_cli, toml_dumps, wait_for_lines
from uprobe_exporter.kernel.tracefs import Tracefs
from uprobe_exporter.plan.elf import load_elf, parse_go_buildinfo

GOROUTINES, CALLS = 8, 2000  # more goroutines than cores: they move between the runtime's threads


def go_version() -> str:
    out = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def config(tmp_path: Path, group: str, probe: dict[str, Any]) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(toml_dumps(build_config(group, [probe], tmp_path / "out.jsonl")))
    return path


def test_go_binaries_are_recognised(build_go: Callable[..., Path], build: Callable[..., Path]) -> None:
    info = load_elf(build_go("gocalls"))
    assert info.is_go and info.go_version == go_version()
    assert "main.handle" in {s.name for s in info.functions()}  # Go's symbol names: package.function
    stripped = load_elf(build_go("gocalls", "-ldflags=-s -w"))  # no .symtab: .go.buildinfo still says it
    assert stripped.is_go and stripped.go_version == go_version()
    assert not load_elf(build("calls")).is_go


def test_parse_go_buildinfo() -> None:
    header = b"\xff Go buildinf:" + bytes([8, 2]) + bytes(16)
    assert parse_go_buildinfo(header + b"\x08go1.19.8\x00") == "go1.19.8"
    assert parse_go_buildinfo(header[:15] + b"\x00" + bytes(16) + b"\x08go1.19.8") == ""  # Go < 1.18: pointers
    assert parse_go_buildinfo(header + b"\x40go1") == ""  # truncated
    assert parse_go_buildinfo(b"\x7fELF" + bytes(60)) is None


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_uretprobe_on_a_go_program_is_refused(
    build_go: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path, command: str,
) -> None:
    """A uretprobe crashes a Go program (SIGILL/'unexpected return pc') within seconds: asking for one is a
    configuration error; return = true alone uses RET instructions (tests/kernel/test_go.py)."""
    binary = build_go("gocalls")
    probe = {"name": "handle", "binary": str(binary), "function": "main.handle", "return": True, "latency": True,
             "return_via": "uretprobe"}
    done = run_cli(command, "--config", str(config(tmp_path, group, probe)))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        'uprobe-exporter: error: probes[0] "handle".return_via: '
        f"{binary} is a Go program ({go_version()}): a uretprobe "
        "crashes it (Go's stack walker rejects the kernel's return trampoline); use return_via = "
        "\"ret_instructions\" (the default, \"auto\", does)"]
    assert [e for e in tracefs.read_uprobe_events() if e.group == group] == []
    assert not tracefs.instance(group).exists()


def test_an_entry_probe_records_every_call_of_a_go_program(
    build_go: Callable[..., Path], group: str, tmp_path: Path,
) -> None:
    binary = build_go("gocalls")
    probe = {"name": "handle", "binary": str(binary), "function": "main.handle", "args": {"x": "%ax:s64"}}
    out = tmp_path / "out.jsonl"
    with ExporterProcess(config(tmp_path, group, probe)) as exporter:
        exporter.wait_ready()
        done = subprocess.run([binary, str(GOROUTINES), str(CALLS)], capture_output=True, text=True, check=True,
                              timeout=120)
        report = json.loads(done.stdout)
        wait_for_lines(out, report["calls"])
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    records = read_jsonl(out)
    assert report["calls"] == GOROUTINES * CALLS
    assert len(records) == report["calls"]
    assert {r["probe"] for r in records} == {"handle"} and {r["pid"] for r in records} == {report["pid"]}
    xs = [r["args"]["x"] for r in records]  # Go's register ABI: the first integer argument in %ax
    assert sum(xs) == report["sum"]
    assert sorted(xs) == sorted(g * 1_000_000 + i for g in range(GOROUTINES) for i in range(CALLS))
    assert len({r["tid"] for r in records}) > 1  # the goroutines ran on several threads
