"""A probed binary replaced on disk while the exporter runs (a rebuild renames a new file over it): the
kernel's probe stays on the old file, so processes started from the new one are not probed. The
exporter notices it in its housekeeping, logs one line and counts it; re-registering is not done."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, ExporterProcess, build_config, read_jsonl, toml_dumps, wait_for_lines
from tests.kernel.test_metrics import scrape
from tests.prom import free_port

CALLS = 5
METRIC = "uprobe_exporter_binary_replaced_total"


def test_a_replaced_binary_is_logged_and_counted(build: Callable[..., Path], group: str, tmp_path: Path) -> None:
    original = build("calls")
    target = tmp_path / "bin" / "calls"
    target.parent.mkdir()
    shutil.copy2(original, target)
    other = tmp_path / "bin" / "other"  # a second probed binary, never touched
    shutil.copy2(original, other)
    port = free_port()
    probes: list[dict[str, Any]] = [
        {"name": "work", "binary": str(target), "function": "work", "args": {"a": "%di:s32"}},
        {"name": "other", "binary": str(other), "function": "work"},
    ]
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, probes, out, metrics={"listen": f"127.0.0.1:{port}"})))
    replaced = f"probed binary {target} was replaced by another file"
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        before = scrape(port)
        assert before.samples(METRIC) and before.value(METRIC, path=str(target)) == 0  # every series from the start
        assert before.value(METRIC, path=str(other)) == 0
        readme = (ROOT / "README.md").read_text()
        for family in text_string_to_metric_families(before.text):  # every metric is in the README's table
            assert family.name.startswith("process_") or f"| `{family.name}" in readme, family.name
        subprocess.run([target, "1", str(CALLS), "0"], capture_output=True, check=True, timeout=60)
        assert wait_for_lines(out, CALLS) == CALLS

        new = target.with_name("calls.new")  # a rebuild: a new file (new inode, same bytes and mtime)
        shutil.copy2(original, new)
        os.rename(new, target)
        deadline = time.monotonic() + 15
        while replaced not in exporter.stderr and time.monotonic() < deadline:
            time.sleep(0.1)
        assert replaced in exporter.stderr, exporter.stderr
        after = scrape(port)
        assert after.value(METRIC, path=str(target)) == 1
        assert after.value(METRIC, path=str(other)) == 0

        # What the count warns about: the new file's calls are not probed (the probe is on the old inode).
        subprocess.run([target, "1", str(CALLS), "0"], capture_output=True, check=True, timeout=60)
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    assert len(read_jsonl(out)) == CALLS  # everything the kernel held was drained at the stop
    assert exporter.stderr.count(replaced) == 1
