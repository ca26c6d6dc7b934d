"""procfs and kubelet-log shell: which pod and container a process belongs to, cached per process.

Read-only, no API server: ``/proc/<pid>/cgroup`` gives the pod UID and container id (cgroup.py), the
kubelet's log directories under ``pods_dir`` (``/var/log/pods``, read inside ``host_root``) and the
``containers`` links beside it give the names (podlogs.py). A process keeps the identity it was
first seen with, also after it exits (its records may be read later); entries of processes gone for
``keep_seconds`` are dropped by ``forget_exited``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from uprobe_exporter.processes.cgroup import parse_cgroup
from uprobe_exporter.processes.podlogs import PodIdentity, PodLogIndex, index_pod_logs
from uprobe_exporter.processes.procfs import thread_exists

log = logging.getLogger(__name__)


def read_pod_logs(pods_dir: Path, containers_dir: Path) -> PodLogIndex:
    """The names under the kubelet's log directories (missing directories: nothing known)."""
    pods: list[tuple[str, list[str]]] = []
    try:
        with os.scandir(pods_dir) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    try:
                        subdirs = [e.name for e in os.scandir(entry.path) if e.is_dir(follow_symlinks=False)]
                    except OSError:  # a lookup: the pod's directory went away meanwhile
                        continue
                    pods.append((entry.name, subdirs))
    except OSError as exc:  # a lookup: no kubelet here (missing directories: nothing known)
        log.debug("cannot list %s: %s", pods_dir, exc.strerror)
    try:
        links = os.listdir(containers_dir)
    except OSError as exc:  # a lookup, as above
        log.debug("cannot list %s: %s", containers_dir, exc.strerror)
        links = []
    return index_pod_logs(pods, links)


def read_cgroup(pid: int, proc: str = "/proc") -> str | None:
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:  # a lookup in /proc: the process exited
        return None


class PodIdentities:
    """``identities(pid)`` → the pod identity of a process, or None outside any pod."""

    def __init__(
        self, pods_dir: Path, containers_dir: Path, proc: str = "/proc", refresh_seconds: float = 1.0,
        keep_seconds: float = 10.0, size: int = 65536, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pods_dir = pods_dir
        self.containers_dir = containers_dir
        self.proc = proc
        self.refresh_seconds = refresh_seconds
        self.keep_seconds = keep_seconds
        self.size = size
        self.clock = clock
        self.index: PodLogIndex | None = None
        self.index_time = -1e18
        self.cache: dict[int, PodIdentity | None] = {}
        self.gone: dict[int, float] = {}  # pid → when it was first found exited

    def _index(self, stale: bool) -> PodLogIndex:
        now = self.clock()
        if self.index is None or (stale and now - self.index_time >= self.refresh_seconds):
            self.index = read_pod_logs(self.pods_dir, self.containers_dir)
            self.index_time = now
        return self.index

    def lookup(self, pid: int) -> tuple[PodIdentity | None, bool]:
        """The identity of ``pid`` from procfs now, and whether it is complete (cacheable)."""
        text = read_cgroup(pid, self.proc)
        if text is None:
            return None, False
        cg = parse_cgroup(text)
        if cg is None:
            return None, True
        index = self._index(False)
        ident = index.identify(cg.pod_uid, cg.container_id)
        if ident is None or (cg.container_id and cg.container_id not in index.containers and not ident.container):
            index = self._index(True)  # a pod or container newer than what was read: read again
            ident = index.identify(cg.pod_uid, cg.container_id)
        if ident is None:
            return PodIdentity("", "", "", cg.container_id), False
        return ident, bool(ident.container)

    def __call__(self, pid: int) -> PodIdentity | None:
        if pid in self.cache:
            return self.cache[pid]
        ident, complete = self.lookup(pid)
        if complete or not thread_exists(pid, self.proc):  # else: ask again next time
            if len(self.cache) >= self.size:
                self.cache.clear()
            self.cache[pid] = ident
        return ident

    def forget_exited(self) -> None:
        """Drop processes gone for ``keep_seconds`` (a reused pid then gets looked up afresh)."""
        now = self.clock()
        for pid in list(self.cache):
            if thread_exists(pid, self.proc):
                if self.gone.pop(pid, None) is not None:  # gone, and its id taken by another process since
                    del self.cache[pid]
            elif now - self.gone.setdefault(pid, now) >= self.keep_seconds:
                del self.cache[pid]
                del self.gone[pid]


def pod_identities(host_root: str, pods_dir: str) -> PodIdentities:
    """The identities of a configuration: ``pods_dir`` inside ``host_root``, ``containers`` beside it."""
    pods = Path(host_root) / pods_dir.lstrip("/")
    return PodIdentities(pods, pods.parent / "containers")
