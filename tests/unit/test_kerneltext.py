"""kerneltext: uprobe_profile, stats and error_log as captured, mountinfo as this process sees it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from uprobe_exporter.errors import TraceParseError
from uprobe_exporter.kernel.kerneltext import (
    find_error_log_entry,
    parse_mountinfo,
    parse_saved_tgids,
    parse_stats,
    parse_uprobe_events,
    parse_uprobe_profile,
)

KERNEL = Path(__file__).parent.parent / "fixtures" / "kernel"


def read(name: str) -> str:
    return (KERNEL / name).read_text(encoding="utf-8")


def test_uprobe_profile_counts_what_the_target_did() -> None:
    report = [json.loads(x) for x in read("calls.report.jsonl").splitlines()]
    work = sum(c["fn"] == "work" for c in report)
    recurse = sum(c["n"] + 1 for c in report if c["fn"] == "recurse")
    entries = parse_uprobe_profile(read("uprobe_profile"))
    assert {e.event: e.hits for e in entries} == {
        "work_entry": work, "work_return": work, "types_entry": work,  # types_entry probes work() too
        "recurse_entry": recurse, "recurse_return": recurse}
    assert {e.path for e in entries} == {"/tmp/calls"}


def test_uprobe_profile_counts_match_the_trace_lines() -> None:
    text = (KERNEL / "calls.trace_pipe").read_bytes().decode("latin-1")
    for e in parse_uprobe_profile(read("uprobe_profile")):
        assert len(re.findall(rf"\d: {e.event}: \(", text)) == e.hits


@pytest.mark.parametrize("cut", [
    lambda line: line.rsplit(None, 1)[0],  # hits column missing
    lambda line: line.replace(line.split()[-1], "many"),
    lambda line: line.replace(" work_entry ", " work entry "),
])
def test_bad_uprobe_profile_line_is_a_parse_error(cut: Callable[[str], str]) -> None:
    lines = read("uprobe_profile").splitlines()
    bad = cut(lines[0])
    with pytest.raises(TraceParseError) as info:
        parse_uprobe_profile("\n".join([bad, *lines[1:]]))
    assert (info.value.reason, info.value.raw) == ("uprobe_profile", bad)


def test_uprobe_profile_ignores_blank_lines() -> None:
    text = read("uprobe_profile")
    assert parse_uprobe_profile(text + "\n\n") == parse_uprobe_profile(text)
    assert parse_uprobe_profile("") == []


def test_stats_keeps_the_integer_lines() -> None:
    text = read("stats")
    integers = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(.+?):\s+(\S+)", line)
        assert m is not None, line
        if m[2].isdigit():
            integers[m[1]] = int(m[2])
    stats = parse_stats(text)
    assert stats == integers
    assert {"overrun", "dropped events", "read events", "commit overrun", "entries", "bytes"} <= stats.keys()
    assert "oldest event ts" not in stats  # "1061.677360" is a time, not a count


def _entry_form(text: str, seconds: int, micros: int) -> str:
    """error_log as the kernel prints it: "[%5llu.%06u] " before the logged entry (trace.c:
    tracing_err_log_seq_show()); the fixture holds the entry the exporter extracted, without it."""
    return f"[{seconds:5d}.{micros:06d}] {text}"


def _command_of(entry: str) -> str:
    return next(line.split("Command: ", 1)[1] for line in entry.splitlines() if "Command: " in line)


def test_error_log_entry_found_with_its_caret() -> None:
    entry = read("error_log")
    command = _command_of(entry)
    caret = entry.rstrip("\n").splitlines()[-1]
    assert caret.strip() == "^"
    other = entry.replace(command, command.replace("/bad ", "/other "))
    log = _entry_form(other, 1000, 1) + _entry_form(entry, 1061, 881582) + _entry_form(other, 1062, 0)
    assert find_error_log_entry(log, command) == entry.rstrip("\n")
    assert find_error_log_entry(log, "  " + command.replace(" ", "   ") + " ") == entry.rstrip("\n")
    assert find_error_log_entry(log, "p:nosuch/x /bin/true:0x1") == ""
    assert find_error_log_entry("", command) == ""


def test_error_log_returns_the_last_entry_for_a_command() -> None:
    entry = read("error_log")
    command = _command_of(entry)
    later = entry.replace("Invalid register name", "Some later error")
    log = _entry_form(entry, 5, 0) + _entry_form(later, 6, 0)
    assert find_error_log_entry(log, command) == later.rstrip("\n")


def test_mountinfo_of_this_process_matches_proc_mounts() -> None:
    """/proc/self/mounts lists the same mounts in the same order, in the older fstab format."""
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text(encoding="utf-8"))
    other = []
    for line in Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines():
        _, mount_point, fstype = line.split()[:3]
        other.append((mount_point.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"), fstype))
    assert [(m.mount_point, m.fstype) for m in mounts] == other
    assert any(m.mount_point == "/" for m in mounts)
    assert ("/proc", "proc") in other


def test_mountinfo_unescapes_octal_in_the_mount_point() -> None:
    line = Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines()[0]
    fields = line.split(" ")
    fields[4] = "/mnt/with\\040space\\011tab\\134slash"
    mounts = parse_mountinfo("\n".join([line, " ".join(fields), "garbage"]))
    assert len(mounts) == 2
    assert mounts[1].mount_point == "/mnt/with space\ttab\\slash"
    assert mounts[1].fstype == line.partition(" - ")[2].split()[0]


def test_uprobe_events_lines() -> None:
    """Lines as trace_uprobe.c probes_seq_show() prints them: "%c:%s/%s %s:0x%0*lx", "(0x%lx)" for a
    ref_ctr_offset, then " %s=%s" per fetcharg."""
    offset = 0x118D
    text = "\n".join([
        f"p:grp/work_entry /tmp/calls:0x{offset:016x} __comm=$comm __sp=%sp:x64 a=%di:s32 s=+0(%si):string",
        f"r:grp/work_return /tmp/calls:0x{offset:016x} ret=$retval:s64",
        f"p:sdt_grp/mark /usr/lib/x86_64-linux-gnu/libfoo.so.1:0x{0x2a40:016x}(0x{0x4010:x})",
        "",
    ])
    events = parse_uprobe_events(text)
    assert [(e.type, e.group, e.event, e.path, e.offset, e.ref_ctr_offset, e.fetchargs) for e in events] == [
        ("p", "grp", "work_entry", "/tmp/calls", offset, None, "__comm=$comm __sp=%sp:x64 a=%di:s32 s=+0(%si):string"),
        ("r", "grp", "work_return", "/tmp/calls", offset, None, "ret=$retval:s64"),
        ("p", "sdt_grp", "mark", "/usr/lib/x86_64-linux-gnu/libfoo.so.1", 0x2A40, 0x4010, ""),
    ]


def test_uprobe_events_skips_lines_it_does_not_know() -> None:
    assert parse_uprobe_events("p:kprobes/x do_sys_open\n\n") == []


def test_saved_tgids() -> None:
    report = [json.loads(x) for x in read("calls.report.jsonl").splitlines()]
    text = "".join(f"{c['tid']} {c['pid']}\n" for c in report) + "junk line here\n"
    assert parse_saved_tgids(text) == {c["tid"]: c["pid"] for c in report}
