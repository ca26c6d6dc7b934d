"""``comm = [...]``: a kernel filter on both events, ANDed with ``filter``. Two processes run the same binary
at once (exec'd through symlinks of different names, so their threads have different names); only the
configured one's threads are recorded, and exactly the calls they made, by their own count. Thread 0 of
each renames itself ("w-0 a-b c"): a thread name, not a process, is what the kernel matches."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ExporterProcess, build_config, read_jsonl, toml_dumps, wait_for_lines
from tests.kernel.test_records import text_of

THREADS, CALLS = 4, 50


@pytest.mark.kernel
@pytest.mark.parametrize(("comm", "entry_filter", "kept"), [
    (["alpha"], "", lambda a: True),
    (["al*", "zulu"], "a > 1500", lambda a: a > 1500),
])
def test_comm_records_only_the_named_threads(
    build: Callable[..., Path], group: str, tmp_path: Path, comm: list[str], entry_filter: str,
    kept: Callable[[int], bool],
) -> None:
    binary = build("calls")
    alpha, bravo = tmp_path / "alpha", tmp_path / "bravo"
    alpha.symlink_to(binary)
    bravo.symlink_to(binary)
    probe: dict[str, Any] = {"name": "work", "binary": str(binary), "function": "work", "comm": comm,
                             "args": {"a": "%di:s32", "s": "+0(%si):string"}, "return": True,
                             "return_args": {"ret": "$retval:s64"}}
    if entry_filter:
        probe["filter"] = entry_filter
    out, config = tmp_path / "out.jsonl", tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], out)))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        runs = [subprocess.Popen([str(p), str(THREADS), str(CALLS), "0"], stdout=subprocess.PIPE)
                for p in (alpha, bravo)]
        reports = [[json.loads(line) for line in run.communicate(timeout=120)[0].decode().splitlines()]
                   for run in runs]
        assert [run.returncode for run in runs] == [0, 0]
        named = [c for c in reports[0] if text_of(c["comm_hex"]) == "alpha"]  # the returns: comm only
        expected = [c for c in named if kept(c["a"])]  # the entries: comm and filter
        wait_for_lines(out, 2 * len(expected))
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    # What each program says it did: both called work() THREADS * CALLS times, on threads named after the
    # symlink but thread 0, which renamed itself.
    for report, name in zip(reports, ("alpha", "bravo"), strict=True):
        assert len(report) == THREADS * CALLS
        assert Counter(text_of(c["comm_hex"]) for c in report) == {name: (THREADS - 1) * CALLS, "w-0 a-b c": CALLS}
    records = read_jsonl(out)
    entries = [r for r in records if r["type"] == "entry"]
    returns = [r for r in records if r["type"] == "return"]
    assert len(named) == (THREADS - 1) * CALLS
    assert (len(expected) == len(named)) if not entry_filter else (0 < len(expected) < len(named))
    assert Counter((r["tid"], r["args"]["a"], r["args"]["s"]) for r in entries) == \
        Counter((c["tid"], c["a"], text_of(c["s_hex"])) for c in expected)
    # an entry filter without a return_filter: the returns of calls it removed are withheld (counted as filtered)
    assert Counter((r["tid"], r["args"]["ret"]) for r in returns) == Counter((c["tid"], c["ret"]) for c in expected)
    assert {r["pid"] for r in records} == {reports[0][0]["pid"]}
    assert {r["comm"] for r in records} == {"alpha"}
    assert all("duration_ns" in r for r in returns)
