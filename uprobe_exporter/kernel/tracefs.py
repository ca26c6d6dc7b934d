"""The module that reads and writes tracefs' control files; an ``OSError`` here becomes a ``TracefsError``
(errors.os_errors) unless it is control flow (a file gone, EBUSY retried), named where it is caught.

Rules from the kernel (kernel/trace/trace_uprobe.c, trace_dynevent.c): ``uprobe_events`` is opened
with O_APPEND and never O_TRUNC (truncation deletes every uprobe on the host); one command per
``write()``; an event is disabled before it is removed; only our group and our instance are touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from uprobe_exporter.errors import KernelRefusedError, TracefsError, is_busy, mapped_oserror, os_errors
from uprobe_exporter.kernel.kerneltext import (
    ProfileEntry,
    UprobeEvent,
    find_error_log_entry,
    parse_mountinfo,
    parse_proc_locks,
    parse_stats,
    parse_uprobe_events,
    parse_uprobe_profile,
)
from uprobe_exporter.plan.fetchargs import too_new_for_kernel

DEFAULT_MOUNT = "/sys/kernel/tracing"


# tracefs is root's, mode 0700 (fs/tracefs/inode.c: TRACEFS_DEFAULT_MODE)
NEEDS_ROOT = {errno.EACCES: "uprobe-exporter needs root to use tracefs"}


def read_text(path: Path) -> str:
    with os_errors(TracefsError, f"cannot read {path}", path=path, fix=NEEDS_ROOT):
        return path.read_bytes().decode("latin-1")


def write_text(path: Path, text: str) -> None:
    """Write a small control file (``enable``, ``trace_clock``, ``filter``...): never uprobe_events."""
    if path.name == "uprobe_events":
        raise TracefsError("uprobe_events must be written with Tracefs.write_uprobe_events", path=str(path))
    with os_errors(TracefsError, f"cannot write {text.strip()!r} to {path}", path=path, fix=NEEDS_ROOT):
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _mount_tracefs(target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", target.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        failed = OSError(err, os.strerror(err))  # mount(2) through ctypes: no OSError of its own
        raise mapped_oserror(failed, TracefsError, f"cannot mount tracefs on {target}",
                             path=target, fix=f"mount it yourself (mount -t tracefs nodev {target}) or set "
                             "exporter.tracefs")


def _not_accessible(path: str) -> str:
    return (f"tracefs at {path} is not accessible: uprobe-exporter needs root to register uprobes "
            "(tracefs is owned by root, mode 0700)")


def find_tracefs(setting: str, mountinfo: str | None = None) -> Path:
    """Locate tracefs: a configured path, or "auto" = the first tracefs mount, mounting it when root."""
    if setting != "auto":
        path = Path(setting)
        if not os.access(path, os.X_OK) and path.is_dir():
            raise TracefsError(_not_accessible(setting), path=setting)
        if not (path / "uprobe_events").exists():
            raise TracefsError(f"{path} is not a tracefs with uprobe_events; fix exporter.tracefs", path=setting)
        return path
    if mountinfo is None:
        mountinfo = read_text(Path("/proc/self/mountinfo"))
    for mount in parse_mountinfo(mountinfo):
        if mount.fstype != "tracefs":
            continue
        if not os.access(mount.mount_point, os.R_OK | os.X_OK):
            raise TracefsError(_not_accessible(mount.mount_point), path=mount.mount_point)
        if Path(mount.mount_point, "uprobe_events").exists():
            return Path(mount.mount_point)
    if os.geteuid() != 0:
        raise TracefsError(
            f"tracefs is not mounted and only root can mount it: run as root, or "
            f"'sudo mount -t tracefs nodev {DEFAULT_MOUNT}' first", path=DEFAULT_MOUNT)
    if not Path(DEFAULT_MOUNT).is_dir():
        raise TracefsError(f"{DEFAULT_MOUNT} does not exist: is sysfs mounted, and the kernel built with "
                           "CONFIG_FTRACE?", path=DEFAULT_MOUNT)
    _mount_tracefs(DEFAULT_MOUNT)
    if not Path(DEFAULT_MOUNT, "uprobe_events").exists():
        raise TracefsError("this kernel has no uprobe_events: it needs CONFIG_UPROBE_EVENTS=y", path=DEFAULT_MOUNT)
    return Path(DEFAULT_MOUNT)


class DirLock:
    """An exclusive ``flock(2)`` on a tracefs directory, held while our descriptor is open.

    tracefs has one superblock however often and wherever it is mounted (fs/tracefs/inode.c:
    get_tree_single), so every exporter on the host sees the same inode and the same lock: in a pod,
    under systemd, in another mount namespace. The kernel drops the lock when its holder dies, so a
    held lock always means a live holder; ``/proc/locks`` names it (checked on Linux 6.18)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def try_acquire(self) -> bool:
        """Lock without waiting: False when another process holds it (or the directory is gone)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise mapped_oserror(exc, TracefsError, f"cannot open {self.path}", path=self.path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise mapped_oserror(exc, TracefsError, f"cannot lock {self.path}", path=self.path) from exc
        self.fd = fd
        return True

    def still_locks_path(self) -> bool:
        """Whether the directory we hold is still the one at ``path`` (a group directory vanishes with
        its last event, and the next event of that group makes a new one that our lock does not cover)."""
        if self.fd is None:
            return False
        try:
            return os.path.samestat(os.fstat(self.fd), os.stat(self.path))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise mapped_oserror(exc, TracefsError, f"cannot stat {self.path}", path=self.path) from exc

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_holder(path: Path) -> int | None:
    """The pid holding a flock on ``path`` as ``/proc/locks`` shows it, or None when it shows none (nobody
    holds one, ``path`` is gone, or the holder is in a pid namespace we cannot see: /proc/locks lists
    only the locks of visible processes)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise mapped_oserror(exc, TracefsError, f"cannot stat {path}", path=path) from exc
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    for lock in parse_proc_locks(read_text(Path("/proc/locks"))):
        if lock.kind == "FLOCK" and lock.dev == dev and lock.inode == st.st_ino:
            return lock.pid
    return None


class Tracefs:
    """A tracefs mount: the top-level files shared by everyone (uprobe_events, uprobe_profile)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def check_writable(self) -> None:
        path = self.root / "uprobe_events"
        if not os.access(path, os.W_OK):
            raise TracefsError(
                f"{path} is not writable: uprobe-exporter needs root to register uprobes",
                path=str(path))

    def write_uprobe_events(self, command: str) -> None:
        """Append one command; on refusal raise with the kernel's own ``error_log`` entry."""
        path = self.root / "uprobe_events"
        with os_errors(TracefsError, f"cannot open {path}", path=path, fix=NEEDS_ROOT):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # never O_TRUNC: that deletes every uprobe
        try:
            os.write(fd, command.encode() + b"\n")
        except OSError as exc:
            log = find_error_log_entry(self._error_log(), command)
            too_new = too_new_for_kernel(command, os.uname().release)
            raise KernelRefusedError(
                f"the kernel refused a uprobe_events command ({errno.errorcode.get(exc.errno or 0, exc.errno)}"
                f": {exc.strerror}{'; ' + too_new if too_new else ''})", path=str(path), command=command,
                error_log=log, errno=exc.errno or 0) from exc
        finally:
            os.close(fd)

    def _error_log(self) -> str:
        try:
            return (self.root / "error_log").read_text(errors="replace")
        except OSError:  # only an explanation of the refusal being raised: without it, the refusal alone
            return ""

    def read_uprobe_events(self) -> list[UprobeEvent]:
        return parse_uprobe_events(read_text(self.root / "uprobe_events"))

    def read_uprobe_profile(self) -> list[ProfileEntry]:
        return parse_uprobe_profile(read_text(self.root / "uprobe_profile"))

    def read_uprobe_hits(self, attempts: int = 3) -> list[tuple[UprobeEvent, int]]:
        """Hits per probe, with its group. ``uprobe_profile`` has no group column, but ``uprobe_events``
        lists the same probes in the same order (both walk dyn_event_list, trace_dynevent.c), so line i
        of one is line i of the other; checked line by line, and read again if a probe came or went
        between the two reads."""
        for _ in range(attempts):
            events, profile = self.read_uprobe_events(), self.read_uprobe_profile()
            if len(events) == len(profile) and all(
                    e.event == p.event and e.path == p.path for e, p in zip(events, profile, strict=True)):
                return [(e, p.hits) for e, p in zip(events, profile, strict=True)]
        raise TracefsError("uprobe_events and uprobe_profile kept changing between two reads",
                           path=str(self.root / "uprobe_profile"))

    def instance(self, name: str) -> Instance:
        return Instance(self.root / "instances" / name)

    def group_dir(self, group: str) -> Path:
        """``events/<group>``: exists while the group has an event; the lock of its owner."""
        return self.root / "events" / group

    def group_event_names(self, group: str) -> list[str]:
        """Every event of ``group`` the kernel shows (uprobes or not)."""
        try:
            return sorted(p.name for p in self.group_dir(group).iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise mapped_oserror(exc, TracefsError, f"cannot list {self.group_dir(group)}",
                                 path=self.group_dir(group)) from exc

    @contextlib.contextmanager
    def claim_lock(self, timeout: float = 30.0) -> Iterator[None]:
        """The host-wide lock under which an exporter checks who owns a group and an instance and
        takes them (milliseconds: never held while probes are disabled or removed). It makes "nobody
        holds it, so I take it" one step for exporters starting at the same moment."""
        lock = DirLock(self.root / "instances")
        deadline = time.monotonic() + timeout
        while not lock.try_acquire():
            if time.monotonic() > deadline:
                pid = lock_holder(lock.path)
                raise TracefsError(f"{lock.path} stayed locked for {timeout:.0f} s by "
                                   f"{f'pid {pid}' if pid else 'a process in another pid namespace'} "
                                   "(another uprobe-exporter starting?)", path=str(lock.path))
            time.sleep(0.01)
        try:
            yield
        finally:
            lock.release()

    def disable_everywhere(self, group: str, event: str) -> None:
        """Disable ``group/event`` at the top level and in every instance: an event enabled anywhere
        cannot be removed (EBUSY). Only ever called for events of our own group."""
        enables = [self.root / "events" / group / event / "enable"]
        enables += sorted((self.root / "instances").glob(f"*/events/{group}/{event}/enable"))
        for enable in enables:
            try:
                if enable.exists() and read_text(enable).strip() not in ("0", ""):
                    write_text(enable, "0")
            except TracefsError:
                if enable.exists():  # else another tool's instance went away meanwhile (ENODEV): nothing to do
                    raise


class Instance:
    """Our private tracefs instance (``instances/<name>``): its own buffer, clock, options and enables."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def name(self) -> str:
        return self.root.name

    def exists(self) -> bool:
        return self.root.is_dir()

    def create(self) -> None:
        with os_errors(TracefsError, f"cannot create tracefs instance {self.root}", path=self.root, fix=NEEDS_ROOT):
            self.root.mkdir()

    def remove(self, attempts: int = 20) -> None:
        """rmdir the instance; EBUSY while a file of it is still open (a scrape finishing): retry."""
        for attempt in range(attempts):
            try:
                self.root.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if not is_busy(exc.errno) or attempt == attempts - 1:
                    raise mapped_oserror(exc, TracefsError, f"cannot remove tracefs instance {self.root}",
                                         path=self.root) from exc
                time.sleep(0.05)

    def configure(self, buffer_size_kb: int, trace_clock: str = "mono") -> None:
        """trace_clock mono (CLOCK_MONOTONIC, comparable across CPUs), record-tgid, our buffer size.
        ``buffer_percent`` 0 makes poll() report data as soon as there is any. The clock and record-tgid
        come first: they are how a leftover instance is recognised as ours (ownership.py)."""
        write_text(self.root / "trace_clock", trace_clock)
        write_text(self.root / "options" / "record-tgid", "1")
        write_text(self.root / "tracing_on", "0")
        write_text(self.root / "buffer_size_kb", str(buffer_size_kb))
        write_text(self.root / "buffer_percent", "0")
        write_text(self.root / "tracing_on", "1")

    def event_dir(self, group: str, event: str) -> Path:
        return self.root / "events" / group / event

    def read_format(self, group: str, event: str) -> str:
        return read_text(self.event_dir(group, event) / "format")

    def set_tracing_on(self, on: bool) -> None:
        """Start or stop recording into our buffer at once; the probes stay armed."""
        write_text(self.root / "tracing_on", "1" if on else "0")

    def read_marks(self) -> tuple[str, str, str, str]:
        """What tells our instance from another one: trace_clock, options/record-tgid, the enabled
        events (set_event, ``group:event`` lines) and current_tracer."""
        return (read_text(self.root / "trace_clock"), read_text(self.root / "options" / "record-tgid"),
                read_text(self.root / "set_event"), read_text(self.root / "current_tracer"))

    def set_enabled(self, group: str, event: str, enabled: bool) -> None:
        write_text(self.event_dir(group, event) / "enable", "1" if enabled else "0")

    def set_filter(self, group: str, event: str, expression: str) -> None:
        """Write an event filter; the kernel explains a bad one in the filter file itself."""
        path = self.event_dir(group, event) / "filter"
        try:
            write_text(path, expression)
        except TracefsError as exc:
            raise KernelRefusedError(f"the kernel refused the filter of {group}/{event}", path=str(path),
                                     command=expression, error_log=self._filter_error(path)) from exc

    @staticmethod
    def _filter_error(path: Path) -> str:
        try:
            return path.read_text(errors="replace").strip()
        except OSError:  # only an explanation of the refusal being raised: without it, the refusal alone
            return ""

    def cpus(self) -> list[int]:
        per_cpu = self.root / "per_cpu"
        with os_errors(TracefsError, f"cannot list {per_cpu}", path=per_cpu):
            names = os.listdir(per_cpu)
        return sorted(int(n[3:]) for n in names if n.startswith("cpu") and n[3:].isdigit())

    def read_stats(self, cpu: int) -> dict[str, int]:
        return parse_stats(read_text(self.root / "per_cpu" / f"cpu{cpu}" / "stats"))

    def read_lost(self) -> int:
        """Events the kernel could not keep: overwritten, commit overruns and dropped, all CPUs."""
        total = 0
        for cpu in self.cpus():
            stats = self.read_stats(cpu)
            total += stats.get("overrun", 0) + stats.get("commit overrun", 0) + stats.get("dropped events", 0)
        return total

    def read_header_page(self) -> str:
        """The page layout of this instance's ring buffer (its sub-buffer size included)."""
        return read_text(self.root / "events" / "header_page")

    @property
    def trace_pipe(self) -> Path:
        return self.root / "trace_pipe"
