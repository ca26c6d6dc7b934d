"""Pure parsers of the small text files of tracefs and procfs: no file is opened here.

Each parser's docstring shows one real input line captured on a 6.18 kernel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from uprobe_exporter.errors import TraceParseError


@dataclass(frozen=True, slots=True)
class Mount:
    mount_point: str
    fstype: str


def _unescape_mount(path: str) -> str:
    # proc_pid_mountinfo escapes space, tab, newline and backslash as \ooo octal
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), path)


def parse_mountinfo(text: str) -> list[Mount]:
    """``/proc/self/mountinfo``: ``21 42 0:13 / /sys/kernel/tracing rw,relatime - tracefs nodev rw``."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and tail:
            mounts.append(Mount(_unescape_mount(fields[4]), tail[0]))
    return mounts


@dataclass(frozen=True, slots=True)
class UprobeEvent:
    """One line read back from ``uprobe_events``."""

    type: str  # "p" or "r"
    group: str
    event: str
    path: str
    offset: int
    ref_ctr_offset: int | None
    fetchargs: str


UPROBE_EVENTS_RE = re.compile(
    r"(?P<type>[pr]):(?P<group>[^/\s]+)/(?P<event>\S+) (?P<path>\S+):0x(?P<off>[0-9a-f]+)"
    r"(?:\(0x(?P<ref>[0-9a-f]+)\))? ?(?P<args>.*)"
)


def parse_uprobe_events(text: str) -> list[UprobeEvent]:
    """``uprobe_events``: ``p:grp/work_entry /tmp/t:0x000000000000118d a=%di:s32``."""
    out = []
    for line in text.splitlines():
        m = UPROBE_EVENTS_RE.fullmatch(line)
        if m:
            out.append(UprobeEvent(m["type"], m["group"], m["event"], m["path"], int(m["off"], 16),
                                   int(m["ref"], 16) if m["ref"] else None, m["args"]))
    return out


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    path: str
    event: str
    hits: int


def parse_uprobe_profile(text: str) -> list[ProfileEntry]:
    """``uprobe_profile`` (trace_uprobe.c: probes_profile_seq_show(), path, event without group, hits):
    ``  /tmp/t work_entry                                                 5``."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[2].isdigit():
            raise TraceParseError("uprobe_profile", line)
        out.append(ProfileEntry(parts[0], parts[1], int(parts[2])))
    return out


def parse_stats(text: str) -> dict[str, int]:
    """``per_cpu/cpuN/stats``, integer keys only: ``overrun: 1948800``, ``dropped events: 0``."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        value = value.strip()
        if sep and value.isdigit():
            out[key.strip()] = int(value)
    return out


ERROR_LOG_RE = re.compile(r"^\[[ \d.]+\] (?P<msg>.*)\n  Command: (?P<cmd>.*)\n(?P<caret> *\^)$", re.M)


def find_error_log_entry(text: str, command: str) -> str:
    """The last ``error_log`` entry for ``command``, with its caret line, or "" if none:

        [  123.456789] trace_uprobe: error: Failed to find the given file
          Command: p:mygrp/ev /no/such/bin:0x1234
                              ^
    """
    wanted = " ".join(command.split())
    found = ""
    for m in ERROR_LOG_RE.finditer(text):
        if " ".join(m["cmd"].split()) == wanted:
            found = f"{m['msg']}\n  Command: {m['cmd']}\n{m['caret']}"
    return found


def parse_saved_tgids(text: str) -> dict[int, int]:
    """``saved_tgids``: ``2267 2267`` (tid tgid) per line."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = int(parts[1])
    return out


@dataclass(frozen=True, slots=True)
class FileLock:
    """One lock from ``/proc/locks`` (fs/locks.c: lock_get_status())."""

    kind: str  # FLOCK, POSIX, OFDLCK, LEASE...
    mode: str  # READ or WRITE
    pid: int  # in the reader's pid namespace; 0 when the holder is not visible there, -1 for OFD locks
    dev: tuple[int, int]  # major, minor
    inode: int


PROC_LOCKS_RE = re.compile(
    r"\d+: (?P<kind>\S+)\s+\S+\s+(?P<mode>\S+)\s+(?P<pid>-?\d+) (?P<maj>[0-9a-f]+):(?P<min>[0-9a-f]+):(?P<ino>\d+) ")


def parse_proc_locks(text: str) -> list[FileLock]:
    """``/proc/locks``: ``1: FLOCK  ADVISORY  WRITE 9775 00:0d:20219 0 EOF``; waiters (``1: -> FLOCK ...``)
    hold nothing and are skipped."""
    out = []
    for line in text.splitlines():
        m = PROC_LOCKS_RE.match(line)
        if m:
            out.append(FileLock(m["kind"], m["mode"], int(m["pid"]), (int(m["maj"], 16), int(m["min"], 16)),
                                int(m["ino"])))
    return out
