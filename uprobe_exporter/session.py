"""Registering our probes is a context manager that always removes them.

Order on the way in: remove leftovers of our group (a run killed with SIGKILL), create and configure
our instance, write one ``uprobe_events`` command per event, read each ``format``, set filters,
enable. On any failure, and on the way out: disable, let the caller drain, remove our events, remove
our instance. Removing an event that was ever enabled clears the buffers of the instances that used
it (kernel/trace/trace_events.c since 417d5ea6e735), which is why draining comes before removal.
"""

from __future__ import annotations

import errno
import logging
import re
import time
from dataclasses import replace
from types import TracebackType

from uprobe_exporter.errors import KernelRefusedError, ProbeRefusedError, TracefsError
from uprobe_exporter.formatfile import EventFormat, parse_format
from uprobe_exporter.probes import ProbeEvent, removal_command, unique_events
from uprobe_exporter.tracefs import Instance, Tracefs

log = logging.getLogger(__name__)


def remove_events(tracefs: Tracefs, group: str, events: list[str], instance: Instance | None) -> list[str]:
    """Disable (everywhere) and remove each event of our ``group``, then our instance. Every step is
    tried; the first failure is raised at the end. Returns what was removed."""
    removed: list[str] = []
    failures: list[TracefsError] = []
    for event in events:
        try:
            tracefs.disable_everywhere(group, event)
            remove_event(tracefs, removal_command(group, event))
            removed.append(f"{group}/{event}")
        except TracefsError as exc:
            failures.append(exc)
    if instance is not None and instance.exists():
        try:
            instance.remove()
            removed.append(f"instances/{instance.name}")
        except TracefsError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
    return removed


def remove_event(tracefs: Tracefs, command: str, attempts: int = 20) -> None:
    """EBUSY while a file of the event is still open or it was just disabled (a reader finishing, a
    scrape): retry for up to a second, as ``Instance.remove`` does."""
    for attempt in range(attempts):
        try:
            tracefs.write_uprobe_events(command)
            return
        except KernelRefusedError as exc:
            if exc.errno != errno.EBUSY or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def remove_group(tracefs: Tracefs, group: str, instance: Instance | None = None) -> list[str]:
    """Remove every uprobe event of ``group`` (and our instance); never touches other groups."""
    events = [ev.event for ev in tracefs.read_uprobe_events() if ev.group == group]
    return remove_events(tracefs, group, events, instance)


def _explain_ref_ctr(tracefs: Tracefs, ev: ProbeEvent, exc: KernelRefusedError) -> KernelRefusedError:
    """The kernel refuses a USDT site whose semaphore offset differs from the one another probe of the
    same file and offset was registered with (trace_uprobe.c: validate_ref_ctr_offset(), EINVAL, nothing
    in error_log): say so, naming that probe when it is a tracefs one."""
    m = re.search(r":0x[0-9a-f]+\((0x[0-9a-f]+)\)", ev.command)
    if not ev.usdt or m is None or exc.errno != errno.EINVAL or exc.error_log.strip():
        return exc
    ours = int(m[1], 16)
    try:
        others = [e for e in tracefs.read_uprobe_events() if e.path == ev.path and e.offset == ev.offset
                  and e.ref_ctr_offset != ours]
    except TracefsError:
        others = []
    who = ", ".join(f"{e.group}/{e.event} with {hex(e.ref_ctr_offset) if e.ref_ctr_offset is not None else 'none'}"
                    for e in others) or "another tracer (bpftrace, BCC, another exporter)"
    return KernelRefusedError(
        f"{exc.args[0]}: this USDT site ({ev.path}:{ev.offset:#x}) is already probed by {who} as its semaphore "
        f"offset, and the kernel allows one semaphore offset per site; ours is {ours:#x}. Stop that tracer or "
        "use the same semaphore", path=exc.path, command=exc.command, error_log=exc.error_log, errno=exc.errno)


class ProbeSession:
    """Our events registered and enabled in our instance, for the duration of a ``with`` block."""

    def __init__(
        self, tracefs: Tracefs, instance: Instance, group: str, events: list[ProbeEvent], buffer_size_kb: int,
    ) -> None:
        self.tracefs = tracefs
        self.instance = instance
        self.group = group
        self.events = events
        self.buffer_size_kb = buffer_size_kb
        self.registered: list[ProbeEvent] = []
        self.formats: dict[str, EventFormat] = {}

    def __enter__(self) -> ProbeSession:
        leftovers = remove_group(self.tracefs, self.group, self.instance)
        if leftovers:
            log.warning("removed leftovers of an earlier run: %s", ", ".join(leftovers))
        try:
            self.instance.create()
            self.instance.configure(self.buffer_size_kb)
            for ev in self.events:
                try:
                    self.tracefs.write_uprobe_events(ev.command)
                except KernelRefusedError as exc:
                    refused = _explain_ref_ctr(self.tracefs, ev, exc)
                    raise ProbeRefusedError(ev.location or ev.full_name, refused) from exc
                self.registered.append(ev)
            for ev in unique_events(self.events):  # a USDT or RET-instruction event has one command per site
                fmt = parse_format(self.instance.read_format(self.group, ev.event))
                p_return = (ev.usdt or ev.at_ret) and ev.is_return  # a `p:` event that ends a call
                self.formats[ev.event] = replace(fmt, ends_call=True) if p_return else fmt
                if ev.filter:
                    try:
                        self.instance.set_filter(self.group, ev.event, ev.filter)
                    except KernelRefusedError as exc:
                        key = "return_filter" if ev.is_return else "filter"
                        raise ProbeRefusedError(f"{ev.location}.{key}" if ev.location else ev.full_name,
                                                exc) from exc
            for ev in unique_events(self.events):
                self.instance.set_enabled(self.group, ev.event, True)
        except BaseException:
            self.close()
            raise
        return self

    def disable(self) -> None:
        """Stop recording (the buffer keeps what it has until it is drained)."""
        for ev in unique_events(self.registered):
            try:
                self.instance.set_enabled(self.group, ev.event, False)
            except TracefsError as exc:
                log.error("%s", exc)

    def close(self) -> None:
        """Disable, remove our events and our instance (drain between ``disable`` and this)."""
        events = [ev.event for ev in reversed(unique_events(self.registered))]
        self.registered.clear()
        remove_events(self.tracefs, self.group, events, self.instance)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        if self.registered or self.instance.exists():
            self.close()
