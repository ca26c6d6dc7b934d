"""procfs shell: follow the processes a ``discover`` probe names, one set of kernel events per real file.

Strategy: every ``discover_interval`` seconds ``/proc`` is listed and each process's ``exe`` link read
(an ``exec`` changes it, so a process first seen as the shell that starts it is looked at again).
A process that matches a probe (its executable, and its pod when the probe names one) has its file
resolved to the real file the kernel would attach to: through ``/proc/<pid>/root`` (another mount
namespace: a path the host does not have), and on overlayfs to the layer that holds it (a uprobe
attaches to the real inode, ``d_real_inode``: two containers of one image run one file, and two events
would record every call twice). Files are told apart by that file's device and inode; each gets its
events ``<probe>_F<n>_entry``/``_return``, registered, given their emitters and then enabled, while
the reader goes on. When no process runs a file any more, its events are disabled after
``discover_grace_seconds``, and enabled again when one comes back. They are removed only at stop:
removing an enabled-once event clears the instance's whole buffer (every probe's unread records).
Bounded: at most ``discover_files_max`` files per probe (refusals counted). One event per file, never a
site appended to an existing event: appending would make the files inseparable (one ``enable`` for all);
measured on 6.18, a site appended to an enabled event is armed at once (5 hits of 5 calls), so that is not
the reason.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from uprobe_exporter.decode.rawpage import Handler
from uprobe_exporter.errors import FormatError, OwnershipError, ResolveError, TracefsError
from uprobe_exporter.kernel.session import ProbeSession
from uprobe_exporter.pipeline.calls import Pipeline
from uprobe_exporter.plan.config import FILE_TAG, Config, DiscoverConfig, ProbeConfig
from uprobe_exporter.plan.probes import ProbeEvent, build_events
from uprobe_exporter.plan.resolve import resolve_file
from uprobe_exporter.processes.identity import PodIdentities
from uprobe_exporter.processes.podlogs import PodIdentity
from uprobe_exporter.processes.procfs import thread_exists
from uprobe_exporter.processes.procmaps import layer_candidates, mapped_paths, parse_maps, parse_mountinfo

log = logging.getLogger(__name__)
DELETED = " (deleted)"
UNMAPPED_SECONDS = 10.0  # how long after exec a library probe's process is looked at again for its library
CHANGES = ("registered", "enabled", "disabled", "refused", "failed")


@dataclass(frozen=True, slots=True)
class RealFile:
    """The file the kernel attaches a uprobe to, and a path to it the kernel can open."""

    dev: int
    inode: int
    path: str


@dataclass(slots=True)
class FileTarget:
    """One distinct file of a probe, its events and the processes running (or mapping) it."""

    probe: str
    number: int
    path: str
    events: list[ProbeEvent]
    pids: set[int] = field(default_factory=set)
    enabled: bool = True
    idle_since: float | None = None


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:  # a lookup in /proc: the process exited, or the file is not readable: nothing to tell
        return None


def exe_matches(spec: DiscoverConfig, exe: str) -> bool:
    """The glob on the file name, or with a '/' on the whole path as the process sees it."""
    return fnmatch.fnmatchcase(exe if "/" in spec.exe else exe.rpartition("/")[2], spec.exe)


def pod_matches(spec: DiscoverConfig, ident: PodIdentity | None) -> bool:
    wanted = [(spec.namespace, "namespace"), (spec.pod, "pod"), (spec.container, "container")]
    if not any(g for g, _ in wanted):
        return True
    return ident is not None and all(not g or fnmatch.fnmatchcase(getattr(ident, k), g) for g, k in wanted)


def library_matches(binary: str, path: str) -> bool:
    """A library probe's ``binary`` (a name or glob, or a path with '/') against a mapped file."""
    return fnmatch.fnmatchcase(path if "/" in binary else path.rpartition("/")[2], binary)


class RealFiles:
    """``find_real_file`` cached by the file as the process sees it (its device, inode, size and mtime:
    one overlay mount's file, one path in one mount namespace): the processes of a container after its
    first cost one ``stat`` each, not a ``mountinfo``. Bounded: cleared when full."""

    def __init__(self, host_root: str, proc: str = "/proc", size: int = 4096) -> None:
        self.host_root = host_root
        self.proc = proc
        self.size = size
        self.cache: dict[tuple[str, int, int, int, int], RealFile] = {}

    def __call__(self, pid: int, path: str, is_exe: bool) -> RealFile | None:
        try:
            st = os.stat(f"{self.proc}/{pid}/exe" if is_exe else f"{self.proc}/{pid}/root{path}")
        except OSError:  # a lookup: the process exited meanwhile
            return None
        key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        real = self.cache.get(key)
        if real is None:
            real = find_real_file(pid, path, is_exe, self.host_root, self.proc, st)
            if real is not None and not real.path.startswith(f"{self.proc}/{pid}/"):  # valid for the next ones
                if len(self.cache) >= self.size:
                    self.cache.clear()
                self.cache[key] = real
        return real


def find_real_file(
    pid: int, path: str, is_exe: bool, host_root: str, proc: str = "/proc", st: os.stat_result | None = None,
) -> RealFile | None:
    """The real file behind ``path`` as process ``pid`` sees it (None: it is gone, or it exited); ``st``:
    its ``stat()`` through the process, when the caller has it."""
    root = f"{proc}/{pid}/root"
    if st is None:
        try:
            st = os.stat(f"{proc}/{pid}/exe" if is_exe else root + path)
        except OSError:  # a lookup: the process exited meanwhile
            return None
    mountinfo = read_text(f"{proc}/{pid}/mountinfo")
    if mountinfo is not None:
        # overlayfs: the first layer holding the path is the real file (its size and mtime are the
        # overlay file's); the layers' paths are the mounter's, the host's: inside host_root
        for candidate in layer_candidates(parse_mountinfo(mountinfo), path):
            host_path = os.path.join(host_root, candidate.lstrip("/"))
            try:
                cst = os.stat(host_path)
            except OSError:  # a lookup: not this candidate
                continue
            if (stat.S_ISREG(cst.st_mode) and (cst.st_size, cst.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
                    and not any(c.isspace() or c == "#" for c in host_path)):
                return RealFile(cst.st_dev, cst.st_ino, host_path)
            break
    # the same file on the host (inside host_root) reads best and pins nothing of the process; else through
    # its root, else (deleted, replaced, a name the kernel cannot take) the exe link the kernel follows
    for kernel_path in (os.path.join(host_root, path.lstrip("/")), root + path):
        try:
            same = os.stat(kernel_path)
        except OSError:  # a lookup: not this candidate
            continue
        if (same.st_dev, same.st_ino) == (st.st_dev, st.st_ino) and not any(
                c.isspace() or c == "#" for c in kernel_path):
            break
    else:
        if not is_exe:
            return None
        kernel_path = f"{proc}/{pid}/exe"
    return RealFile(st.st_dev, st.st_ino, kernel_path)


def files_of(
    probe: ProbeConfig, pid: int, exe: str, identities: PodIdentities | None, real_files: RealFiles,
) -> list[RealFile]:
    """The real files of ``probe`` process ``pid`` runs (its executable, or the libraries it maps that
    ``binary`` names), if its pod matches the probe's; ``exe`` already matched."""
    assert probe.discover is not None
    ident = identities(pid) if identities is not None else None  # looked up while the process runs
    if not pod_matches(probe.discover, ident):
        return []
    if probe.binary:
        maps = read_text(f"{real_files.proc}/{pid}/maps")
        paths = [p for p in mapped_paths(parse_maps(maps or "")) if library_matches(probe.binary, p)]
    else:
        paths = [exe]
    found = (real_files(pid, path, not probe.binary) for path in paths)
    return [real for real in found if real is not None]


def iter_processes(proc: str = "/proc") -> Iterator[tuple[int, str]]:
    """Every process and its executable as it sees it (" (deleted)" left as the kernel shows it)."""
    for name in os.listdir(proc):
        if name.isdigit():
            try:
                yield int(name), os.readlink(f"{proc}/{name}/exe")
            except OSError:  # a kernel thread, or gone
                continue


@dataclass(frozen=True, slots=True)
class SurveyEntry:
    """What ``check`` shows of a discover probe: one file it would follow now, the processes running it,
    and its events (or why it cannot be probed)."""

    probe: ProbeConfig
    file: RealFile
    pids: tuple[int, ...]
    events: tuple[ProbeEvent, ...]
    problem: str = ""


def survey(config: Config, identities: PodIdentities | None, proc: str = "/proc") -> list[SurveyEntry]:
    """The files each discover probe would follow today and their events; touches nothing."""
    probes = [p for p in config.probes if p.discover is not None]
    found: dict[tuple[str, int, int], tuple[ProbeConfig, RealFile, list[int]]] = {}
    real_files = RealFiles(config.exporter.host_root, proc)
    for pid, exe in sorted(iter_processes(proc)):
        exe = exe.removesuffix(DELETED)
        for probe in probes:
            assert probe.discover is not None
            if exe_matches(probe.discover, exe):
                for real in files_of(probe, pid, exe, identities, real_files):
                    found.setdefault((probe.name, real.dev, real.inode), (probe, real, []))[2].append(pid)
    out: list[SurveyEntry] = []
    numbers: Counter[str] = Counter()
    for probe, real, pids in found.values():
        base = f"{probe.name}{FILE_TAG}{numbers[probe.name]}"
        numbers[probe.name] += 1
        try:
            resolved = resolve_file(probe, Path(real.path), config.exporter.host_root)
            events = build_events(resolved, config.exporter.group, probe.location, base)
            out.append(SurveyEntry(probe, real, tuple(pids), tuple(events)))
        except ResolveError as exc:
            out.append(SurveyEntry(probe, real, tuple(pids), (), str(exc)))
    return out


class Discoverer:
    """Finds the processes of the ``discover`` probes and keeps their files' events registered."""

    def __init__(
        self, config: Config, session: ProbeSession, pipeline: Pipeline, handlers: dict[int, Handler] | None,
        events: list[ProbeEvent], identities: PodIdentities | None, proc: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probes = [p for p in config.probes if p.discover is not None]
        self.exporter = config.exporter
        self.session = session
        self.pipeline = pipeline
        self.handlers = handlers  # the raw decoder's, by event id (None: the text reader)
        self.events = events  # every event registered (the metrics read it)
        self.identities = identities
        self.proc = proc
        self.clock = clock
        self.real_files = RealFiles(config.exporter.host_root, proc)
        self.files: dict[tuple[str, int, int], FileTarget] = {}
        self.failed: set[tuple[str, int, int]] = set()  # files a probe cannot be put in (logged once)
        self.exes: dict[int, str] = {}  # pid → its exe link when last looked at
        self.followed: dict[int, set[tuple[str, int, int]]] = {}
        self.numbers: Counter[str] = Counter()
        # processes a library probe matched before its library was mapped (the scan came between exec and
        # ld.so's mmap, or it dlopen()s later): their maps are read again at the next scans
        self.unmapped: dict[int, float] = {}  # pid → until when
        self.changes: dict[tuple[str, str], int] = {(p.name, c): 0 for p in self.probes for c in CHANGES}

    def scan(self) -> None:
        """One pass over ``/proc``: new processes followed, exited ones dropped, idle files disabled."""
        now = self.clock()
        try:
            processes = dict(iter_processes(self.proc))
        except OSError as exc:  # a fault at run time: logged, this scan skipped, the next one tries again
            log.error("cannot list %s: %s", self.proc, exc.strerror)
            return
        for pid in [p for p in self.exes if p not in processes]:
            del self.exes[pid]
            self.unmapped.pop(pid, None)
            self._unfollow(pid)
        for pid, exe in processes.items():
            if self.exes.get(pid) == exe:
                if pid in self.unmapped:
                    self._retry_libraries(pid, exe.removesuffix(DELETED), now)
                continue
            self.exes[pid] = exe
            self.unmapped.pop(pid, None)
            self._unfollow(pid)  # it ran exec since
            exe = exe.removesuffix(DELETED)
            for probe in self.probes:
                assert probe.discover is not None
                if exe_matches(probe.discover, exe) and not self._follow(probe, pid, exe) and probe.binary:
                    self.unmapped[pid] = now + UNMAPPED_SECONDS
        self._idle(now)

    def _retry_libraries(self, pid: int, exe: str, now: float) -> None:
        until = self.unmapped.pop(pid)
        followed = self.followed.get(pid, set())
        for probe in self.probes:
            assert probe.discover is not None
            if (probe.binary and exe_matches(probe.discover, exe) and not any(k[0] == probe.name for k in followed)
                    and not self._follow(probe, pid, exe) and now < until):
                self.unmapped[pid] = until

    def _unfollow(self, pid: int) -> None:
        for key in self.followed.pop(pid, ()):
            target = self.files.get(key)
            if target is not None:
                target.pids.discard(pid)

    def _follow(self, probe: ProbeConfig, pid: int, exe: str) -> bool:
        """Follow the process's files of the probe; False when it runs or maps none (yet)."""
        found = files_of(probe, pid, exe, self.identities, self.real_files)
        for real in found:
            key = (probe.name, real.dev, real.inode)
            target = self.files.get(key)
            if target is None:
                if key in self.failed:
                    continue
                target = self._register(probe, key, real, pid)
                if target is None:
                    continue
            target.pids.add(pid)
            self.followed.setdefault(pid, set()).add(key)
            log.debug("probe %s: process %d runs %s", probe.name, pid, target.path)
            if not target.enabled:
                self._set_enabled(target, True)
        return bool(found)

    def _register(self, probe: ProbeConfig, key: tuple[str, int, int], real: RealFile, pid: int) -> FileTarget | None:
        files = sum(1 for t in self.files.values() if t.probe == probe.name)
        if files >= self.exporter.discover_files_max:
            self.changes[probe.name, "refused"] += 1
            self.failed.add(key)
            log.warning("probe %s: not following %s (process %d): already %d files, discover_files_max",
                        probe.name, real.path, pid, files)
            return None
        number = self.numbers[probe.name]
        try:
            resolved = resolve_file(probe, Path(real.path), self.exporter.host_root)
            events = build_events(resolved, self.exporter.group, probe.location,
                                  f"{probe.name}{FILE_TAG}{number}")
            formats = self.session.add(events)
        except (ResolveError, TracefsError, OwnershipError) as exc:
            if not thread_exists(pid, self.proc):  # it exited meanwhile: the next process will tell
                log.debug("probe %s: process %d exited before %s was probed: %s", probe.name, pid, real.path, exc)
                return None
            self.changes[probe.name, "failed"] += 1
            self.failed.add(key)
            log.warning("probe %s: cannot probe %s (process %d): %s", probe.name, real.path, pid, exc)
            return None
        self.numbers[probe.name] += 1
        try:
            handlers = self.pipeline.add_events(events, formats.values())
        except FormatError as exc:  # never enabled: no record of them; removed with the others at the stop
            self.changes[probe.name, "failed"] += 1
            self.failed.add(key)
            log.warning("probe %s: cannot follow %s (process %d): %s", probe.name, real.path, pid, exc)
            return None
        if self.handlers is not None:
            self.handlers.update(handlers)  # before enabling: no record of an event without its emitter
        self.events.extend(events)
        target = FileTarget(probe.name, number, real.path, events)
        self.files[key] = target
        try:
            self.session.set_enabled(events, True)
        except TracefsError as exc:
            target.enabled = False
            log.error("probe %s: cannot enable the events of %s: %s", probe.name, real.path, exc)
        self.changes[probe.name, "registered"] += 1
        log.info("probe %s: following %s (process %d) as %s", probe.name, real.path, pid,
                 ", ".join(e.event for e in events))
        return target

    def _set_enabled(self, target: FileTarget, enabled: bool) -> None:
        try:
            self.session.set_enabled(target.events, enabled)
        except TracefsError as exc:
            log.error("probe %s: %s", target.probe, exc)
            return
        target.enabled, target.idle_since = enabled, None
        self.changes[target.probe, "enabled" if enabled else "disabled"] += 1
        log.info("probe %s: %s %s", target.probe, "enabled again" if enabled else "no process runs, disabled",
                 target.path)

    def _idle(self, now: float) -> None:
        for target in self.files.values():
            if target.pids or not target.enabled:
                target.idle_since = None
            elif target.idle_since is None:
                target.idle_since = now
            elif now - target.idle_since >= self.exporter.discover_grace_seconds:
                self._set_enabled(target, False)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.exporter.discover_interval)
            self.scan()

    def collect(self) -> Iterable[Metric]:
        """``uprobe_exporter_targets`` and ``uprobe_exporter_discover_changes_total`` (scrape thread)."""
        targets = GaugeMetricFamily("uprobe_exporter_targets", "What each discover probe follows now: distinct "
                                    "files (kind=files, events enabled) and processes (kind=processes).",
                                    labels=["probe", "kind"])
        files = list(self.files.values())
        for probe in self.probes:
            mine = [t for t in files if t.probe == probe.name]
            targets.add_metric([probe.name, "files"], sum(t.enabled for t in mine))
            targets.add_metric([probe.name, "processes"], len({p for t in mine for p in list(t.pids)}))
        yield targets
        changes = CounterMetricFamily("uprobe_exporter_discover_changes", "Changes of the discovered files: "
                                      "registered, enabled again, disabled (no process for the grace period), "
                                      "refused (discover_files_max) and failed (not probeable).",
                                      labels=["probe", "change"])
        for (probe_name, change), n in sorted(dict(self.changes).items()):
            changes.add_metric([probe_name, change], n)
        yield changes
