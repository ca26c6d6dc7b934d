"""procfs.TgidCache on a fake /proc and a saved_tgids file."""

from __future__ import annotations

from pathlib import Path

from uprobe_exporter.processes.procfs import TgidCache


def test_exited_threads_are_answered_from_one_read_of_saved_tgids(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "7").mkdir(parents=True)
    (proc / "7" / "status").write_text("Name:\tx\nTgid:\t5\n")
    saved = tmp_path / "saved_tgids"
    saved.write_text("100 100\n101 100\n")
    tgids = TgidCache(saved, str(proc))
    assert tgids(7) == 5  # alive: from /proc
    assert tgids(100) == 100
    saved.write_text("100 999\n101 999\n102 102\n")  # not read again while the last read answers
    assert tgids(101) == 100
    assert tgids(102) == 102  # not in the last read: read again
    assert tgids(103) == 0
    tgids.clear()
    assert tgids(101) == 999
