"""Registering our probes is a context manager that always removes them.

Order on the way in: remove leftovers of our group (a run killed with SIGKILL), create and configure
our instance, write one ``uprobe_events`` command per event, read each ``format``, set filters,
enable. On any failure, and on the way out: disable, let the caller drain, remove our events, remove
our instance. Removing an event that was ever enabled clears the buffers of the instances that used
it (kernel/trace/trace_events.c since 417d5ea6e735), which is why draining comes before removal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType

from uprobe_exporter.errors import KernelRefusedError, ProbeRefusedError, TracefsError
from uprobe_exporter.formatfile import EventFormat, parse_format
from uprobe_exporter.probes import ProbeEvent, removal_command
from uprobe_exporter.tracefs import Instance, Tracefs, write_text

log = logging.getLogger(__name__)


def _disable_everywhere(tracefs: Tracefs, group: str, event: str) -> None:
    """Disable ``group/event`` at the top level and in every instance (it is ours to disable)."""
    candidates = [tracefs.root / "events" / group / event / "enable"]
    candidates += sorted((tracefs.root / "instances").glob(f"*/events/{group}/{event}/enable"))
    for enable in candidates:
        try:
            if enable.read_text().strip() not in ("0", ""):
                write_text(enable, "0")
        except OSError:
            continue


def remove_group(tracefs: Tracefs, group: str, instance: Instance | None = None) -> list[str]:
    """Remove every uprobe event of ``group`` (and our instance); never touches other groups."""
    removed = []
    for ev in tracefs.read_uprobe_events():
        if ev.group != group:
            continue
        _disable_everywhere(tracefs, group, ev.event)
        tracefs.write_uprobe_events(removal_command(group, ev.event))
        removed.append(f"{group}/{ev.event}")
    if instance is not None and instance.exists():
        instance.remove()
        removed.append(f"instances/{instance.name}")
    return removed


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
                    raise ProbeRefusedError(ev.location or ev.full_name, exc) from exc
                self.registered.append(ev)
            for ev in self.events:
                self.formats[ev.event] = parse_format(self.instance.read_format(self.group, ev.event))
                if ev.filter:
                    try:
                        self.instance.set_filter(self.group, ev.event, ev.filter)
                    except KernelRefusedError as exc:
                        key = "return_filter" if ev.is_return else "filter"
                        raise ProbeRefusedError(f"{ev.location}.{key}" if ev.location else ev.full_name,
                                                exc) from exc
            for ev in self.events:
                self.instance.set_enabled(self.group, ev.event, True)
        except BaseException:
            self.close()
            raise
        return self

    def disable(self) -> None:
        """Stop recording (the buffer keeps what it has until it is drained)."""
        for ev in self.registered:
            try:
                self.instance.set_enabled(self.group, ev.event, False)
            except TracefsError as exc:
                log.error("%s", exc)

    def close(self, drain: Callable[[], None] | None = None) -> None:
        """Disable, drain, remove our events and our instance; every step is tried."""
        self.disable()
        if drain is not None:
            drain()
        failures: list[TracefsError] = []
        for ev in reversed(self.registered):
            try:
                self.tracefs.write_uprobe_events(removal_command(self.group, ev.event))
            except KernelRefusedError as exc:
                failures.append(exc)
        self.registered.clear()
        try:
            self.instance.remove()
        except TracefsError as exc:
            failures.append(exc)
        if failures:
            raise failures[0]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        if self.registered or self.instance.exists():
            self.close()
