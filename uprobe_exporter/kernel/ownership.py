"""Our group and our instance are ours alone, on the whole host.

Strategy: each is locked for the whole run with ``flock(2)`` on a tracefs directory (``DirLock``),
which every exporter sees, whatever its mount namespace: our instance ``instances/<instance>`` and
our group ``events/<group>``. The kernel releases a lock when its holder dies, so a held lock means a
live exporter (refused, naming its pid) and an unlocked group or instance is a leftover of a dead
one (removed). Deciding "nobody holds it, so I take it" and creating the group (which exists only
once an event is registered) happen under one short host-wide claim lock (``Tracefs.claim_lock``),
so two exporters starting at the same moment cannot both take it or remove each other's fresh
events. Removing leftovers (slow: an RCU grace period per event) happens outside the claim, holding
the leftovers' own locks; then the claim starts over.

An instance is recognised as ours (a leftover we may remove) when nobody holds its lock, its
``trace_clock`` is ``mono`` and ``options/record-tgid`` is 1 (what ``Instance.configure`` sets first),
no tracer runs in it and nothing is enabled in it but events of our group. Anything else someone
made with our instance's name is refused and left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from uprobe_exporter.errors import OwnershipError
from uprobe_exporter.kernel.tracefs import DirLock, Instance, Tracefs, lock_holder

log = logging.getLogger(__name__)
CLAIM_ATTEMPTS = 3  # leftovers removed, then claimed again; a third round means someone keeps recreating them


def foreign_instance_reason(marks: tuple[str, str, str, str], group: str) -> str:
    """Why an existing, unlocked instance is not a leftover of ours ("" when it is). ``marks`` are
    ``Instance.read_marks()``: trace_clock (``local global [mono] ...``), options/record-tgid,
    set_event (``group:event`` lines) and current_tracer."""
    clock, tgid, set_event, tracer = marks
    if "[mono]" not in clock.split():
        current = next((w for w in clock.split() if w.startswith("[")), "?")
        return f"its trace_clock is {current.strip('[]')}, not mono"
    if tgid.strip() != "1":
        return "its options/record-tgid is 0"
    if tracer.strip() not in ("", "nop"):
        return f"the {tracer.strip()} tracer runs in it"
    others = [e for e in set_event.split() if e.partition(":")[0] != group]
    if others:
        return f"events of other groups are enabled in it ({', '.join(others[:3])})"
    return ""


def _held(what: str, name: str, pid: int | None, path: str) -> OwnershipError:
    who = f"pid {pid}" if pid else "a process in another pid namespace"
    return OwnershipError(f"exporter.{what} '{name}' is held by a running uprobe-exporter ({who}); give each "
                          "exporter on a host its own group and instance", path=path, pid=pid)


def _take(lock: DirLock, what: str, name: str) -> None:
    """Lock ``lock.path`` or raise naming the live holder; a holder that exits meanwhile is retried."""
    for _ in range(5):
        if lock.try_acquire():
            return
        pid = lock_holder(lock.path)
        if pid is not None:
            raise _held(what, name, pid, str(lock.path))
        if not lock.path.exists():
            return
    # Held all along, yet /proc/locks shows no holder: it lists only the locks of processes visible in
    # our pid namespace (fs/locks.c: locks_show()), as in a pod without hostPID.
    raise _held(what, name, 0, str(lock.path))


@dataclass
class Ownership:
    """The locks we hold: on our instance and on our group (once it exists)."""

    group: str
    instance: Instance
    locks: list[DirLock] = field(default_factory=list)

    def take_group(self, tracefs: Tracefs) -> bool:
        """Lock ``events/<group>`` if it exists (False: it does not)."""
        return self._take(DirLock(tracefs.group_dir(self.group)), "group", self.group)

    def take_instance(self) -> bool:
        """Lock ``instances/<instance>`` if it exists (False: it does not)."""
        return self._take(DirLock(self.instance.root), "instance", self.instance.name)

    def _take(self, lock: DirLock, what: str, name: str) -> bool:
        _take(lock, what, name)
        if lock.held:
            self.locks.append(lock)
        return lock.held

    def holds(self, path: Path) -> bool:
        """Whether we hold a lock on the directory now at ``path`` (not one that was removed and made
        again by someone else)."""
        return any(lock.path == path and lock.still_locks_path() for lock in self.locks)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks.clear()


def _not_uprobes(tracefs: Tracefs, group: str, attempts: int = 20) -> list[str]:
    """Events of ``group`` that ``uprobe_events`` does not list. An event being removed (a SIGKILLed
    exporter's last write) leaves ``uprobe_events`` before its directory goes: look again for up to a
    second before calling the group another tool's."""
    for attempt in range(attempts):
        uprobes = {e.event for e in tracefs.read_uprobe_events() if e.group == group}
        others = [e for e in tracefs.group_event_names(group) if e not in uprobes]
        if not others or attempt == attempts - 1:
            return others
        time.sleep(0.05)
    return []


def _inspect(tracefs: Tracefs, group: str, instance: Instance) -> Ownership:
    """Under the claim lock: lock what exists of our group and instance, refusing what a live exporter
    holds and what is not ours. The returned locks are on leftovers (empty: nothing exists)."""
    owned = Ownership(group, instance)
    try:
        owned.take_group(tracefs)
        if owned.locks:
            others = _not_uprobes(tracefs, group)
            if others:
                raise OwnershipError(
                    f"exporter.group '{group}' holds events that are not uprobes ({', '.join(others[:3])}): "
                    "it belongs to the kernel or another tool; choose another group",
                    path=str(tracefs.group_dir(group)))
        if owned.take_instance():
            reason = foreign_instance_reason(instance.read_marks(), group)
            if reason:
                raise OwnershipError(
                    f"exporter.instance '{instance.name}': {instance.root} exists and is not ours ({reason}); "
                    "choose another instance name, or remove it if nobody uses it", path=str(instance.root))
    except BaseException:
        owned.release()
        raise
    return owned


def claim(
    tracefs: Tracefs, owned: Ownership, create: Callable[[], None], remove_leftovers: Callable[[], list[str]],
) -> None:
    """Take our group and instance for this run (their locks go into ``owned``): refuse what a live
    exporter holds or what is not ours, remove leftovers of a dead one (``remove_leftovers``, outside
    the claim lock, holding their locks), then, under the claim lock, make the instance, ``create``
    (register the events) and lock both. If ``create`` fails, what it made stays locked in ``owned``
    until the caller has removed it."""
    group, instance = owned.group, owned.instance
    for _ in range(CLAIM_ATTEMPTS):
        with tracefs.claim_lock():
            leftovers = _inspect(tracefs, group, instance)
            if not leftovers.locks:
                instance.create()
                if not owned.take_instance():
                    raise OwnershipError(f"{instance.root} vanished while it was being created",
                                         path=str(instance.root))
                try:
                    create()
                finally:
                    owned.take_group(tracefs)
                return
        owned.locks.extend(leftovers.locks)
        try:
            removed = remove_leftovers()
        finally:
            owned.release()
        if removed:
            log.warning("removed leftovers of an earlier run: %s", ", ".join(removed))
    raise OwnershipError(f"leftovers of exporter.group '{group}' / exporter.instance '{instance.name}' came "
                         f"back {CLAIM_ATTEMPTS} times after removal: someone else keeps creating them",
                         path=str(instance.root))


def claim_leftovers(tracefs: Tracefs, group: str, instance: Instance) -> Ownership:
    """For ``cleanup``: lock what is left of our group and instance (refusing what a live exporter holds
    or what is not ours); the caller removes it, then releases."""
    with tracefs.claim_lock():
        return _inspect(tracefs, group, instance)
