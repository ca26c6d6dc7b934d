"""Fetchargs that older kernels lack, on whatever kernel runs the test (tests/vm/run-kernels boots 5.10,
6.1 and 6.12): where the kernel has the feature the records carry it; where it lacks it the exporter
refuses at start with one line naming the version needed, exit 2, and leaves nothing registered."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.helpers import ExporterProcess, build_config, read_jsonl, run_cli, toml_dumps, wait_for_lines
from uprobe_exporter.kernel.tracefs import Tracefs
from uprobe_exporter.plan.fetchargs import kernel_release_version

CHAR = {"name": "w", "function": "work", "args": {"s": "+0(%si):string", "c": "+0(%si):char"}}


def test_char_type_records_or_is_refused_naming_linux_6_3(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    binary = build("calls")
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [{"binary": str(binary), **CHAR}], out)))
    release = os.uname().release
    version = kernel_release_version(release)
    assert version is not None, release
    if version < (6, 3):
        done = run_cli("run", "--config", str(config))
        assert done.returncode == 2, done.stderr
        first = done.stderr.splitlines()[0]
        assert first.startswith("uprobe-exporter: error: probes[0] \"w\": the kernel refused a uprobe_events command")
        assert f"the 'char' fetcharg type needs Linux 6.3 or later; this kernel is {release}" in first
        assert "Traceback" not in done.stderr
        assert [e for e in tracefs.read_uprobe_events() if e.group == group] == []
        assert not tracefs.instance(group).exists()
        return
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        subprocess.run([binary, "2", "5", "0"], capture_output=True, check=True)
        assert wait_for_lines(out, 10) == 10
        assert exporter.stop()[0] == 0, exporter.stderr
    records = read_jsonl(out)
    ascii_strings = [r for r in records if r["args"]["s"] and r["args"]["s"].isascii()]
    assert ascii_strings
    assert all(r["args"]["c"] == r["args"]["s"][0] for r in ascii_strings), records
