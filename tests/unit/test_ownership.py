"""ownership.foreign_instance_reason: how a leftover instance of ours is told from someone else's."""

from __future__ import annotations

from uprobe_exporter.kernel.ownership import foreign_instance_reason

CLOCKS = "local global counter uptime perf [mono] mono_raw boot tai x86-tsc\n"


def test_a_leftover_of_ours() -> None:
    assert foreign_instance_reason((CLOCKS, "1\n", "grp:work_entry\ngrp:work_return\n", "nop\n"), "grp") == ""
    assert foreign_instance_reason((CLOCKS, "1\n", "", "nop\n"), "grp") == ""


def test_someone_elses() -> None:
    default = "[local] global counter uptime perf mono mono_raw boot tai x86-tsc\n"
    assert foreign_instance_reason((default, "0\n", "", "nop\n"), "grp") == "its trace_clock is local, not mono"
    assert foreign_instance_reason((CLOCKS, "0\n", "", "nop\n"), "grp") == "its options/record-tgid is 0"
    assert foreign_instance_reason((CLOCKS, "1\n", "", "function\n"), "grp") == "the function tracer runs in it"
    assert foreign_instance_reason((CLOCKS, "1\n", "grp:a\nsched:sched_switch\n", "nop\n"), "grp") == (
        "events of other groups are enabled in it (sched:sched_switch)")
