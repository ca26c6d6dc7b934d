"""Registering our probes is a context manager that always removes them.

Order on the way in (ownership.py): under the host-wide claim lock, refuse a group or instance a live
exporter holds or that is not ours, remove leftovers of a dead one, create and configure our instance,
write one ``uprobe_events`` command per event and lock the group and the instance for the run; then
read each ``format``, set filters, enable.

On the way out (``stop_recording``, the caller drains, ``close``): recording stops at once
(``tracing_on`` 0: instant), the caller drains the buffer, then each event is disabled and removed in
turn, hottest first (``uprobe_profile`` hits), so every second spent leaves fewer armed probes. That
costs the kernel an RCU grace period or two per event (≈40 ms to disable, ≈18 ms to remove on Linux
6.18), which is why the stop has a budget and its cost is known at start (``estimate_stop``).
Removing an event that was ever enabled clears the buffers of the instances that used it
(kernel/trace/trace_events.c since 417d5ea6e735), which is why draining comes before removal.
"""

from __future__ import annotations

import errno
import logging
import re
import time
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import uprobe_exporter
from uprobe_exporter.errors import (
    KernelRefusedError,
    OwnershipError,
    ProbeRefusedError,
    TracefsError,
    TraceParseError,
    is_busy,
    is_gone,
)
from uprobe_exporter.kernel.formatfile import EventFormat, parse_format
from uprobe_exporter.kernel.ownership import Ownership, claim
from uprobe_exporter.kernel.tracefs import Instance, Tracefs
from uprobe_exporter.plan.probes import ProbeEvent, removal_command, unique_events

log = logging.getLogger(__name__)
EVENT_STOP_COST_S = 0.06  # disable + remove one event, measured on Linux 6.18 (40 ms + 18 ms)
PESSIMISTIC_STOP_COST_S = 0.15  # below budget even at this cost per event: not worth measuring at start
STOP_MARGIN = 1.25  # a probe installed in running programs costs more than the measured one (61 vs 70 ms)
STOP_FIXED_S = 2.0  # the stop's other work: drain, flush the output (up to 1.5 s), remove the instance
PROGRESS_SECONDS = 2.0
CALIBRATION_EVENT = "__stop_cost"  # cannot clash with <probe>_entry / <probe>_return


def remove_events(
    tracefs: Tracefs, group: str, events: list[str], instance: Instance | None, *, everywhere: bool = True,
    progress: float | None = None,
) -> list[str]:
    """Disable and remove each event of our ``group`` in turn, then our instance. ``everywhere``: disable
    it at the top level and in every instance (leftovers); otherwise only in ``instance`` (where we
    enabled it), and everywhere only if the kernel still finds it busy. An event already gone is
    skipped. Every step is tried; the first failure is raised at the end. ``progress``: log how far it
    got every so many seconds. Returns what was removed."""
    removed: list[str] = []
    failures: list[TracefsError] = []
    start = last = time.monotonic()
    for i, event in enumerate(events):
        try:
            if everywhere or instance is None:
                tracefs.disable_everywhere(group, event)
            elif instance.event_dir(group, event).exists():
                instance.set_enabled(group, event, False)
            if remove_event(tracefs, removal_command(group, event), group, event):
                removed.append(f"{group}/{event}")
        except TracefsError as exc:
            failures.append(exc)
        if progress is not None and time.monotonic() - last >= progress:
            last = time.monotonic()
            log.info("stopping: %d of %d events disabled and removed in %.1f s", i + 1, len(events), last - start)
    if instance is not None and instance.exists():
        try:
            instance.remove()
            removed.append(f"instances/{instance.name}")
        except TracefsError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
    return removed


def remove_event(tracefs: Tracefs, command: str, group: str = "", event: str = "", attempts: int = 20) -> bool:
    """Write ``command`` (``-:group/event``). EBUSY while a file of the event is still open, it was just
    disabled (a reader finishing, a scrape) or it is enabled elsewhere: disable it everywhere (when
    ``group`` is given) and retry for up to a second, as ``Instance.remove`` does. False: it was gone."""
    for attempt in range(attempts):
        try:
            tracefs.write_uprobe_events(command)
            return True
        except KernelRefusedError as exc:
            if is_gone(exc.errno):
                return False
            if not is_busy(exc.errno) or attempt == attempts - 1:
                raise
            if group and attempt == 0:
                tracefs.disable_everywhere(group, event)
            time.sleep(0.05)
    return False


def remove_group(tracefs: Tracefs, group: str, instance: Instance | None = None) -> list[str]:
    """Remove every uprobe event of ``group`` (and our instance); never touches other groups."""
    # an event with several probes (USDT sites) is listed once per probe, and removed once
    events = list(dict.fromkeys(ev.event for ev in tracefs.read_uprobe_events() if ev.group == group))
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
    """Our events registered and enabled in our instance, for the duration of a ``with`` block; our
    group and instance locked for as long (ownership.py)."""

    def __init__(
        self, tracefs: Tracefs, instance: Instance, group: str, events: list[ProbeEvent], buffer_size_kb: int,
        stop_budget_seconds: float = 30.0, discover_events_max: int = 0,
    ) -> None:
        self.tracefs = tracefs
        # events discover probes may register at run time, at most: counted in the stop's estimate
        self.discover_events_max = discover_events_max
        self.instance = instance
        self.group = group
        self.events = events
        self.buffer_size_kb = buffer_size_kb
        self.stop_budget_seconds = stop_budget_seconds
        self.registered: list[ProbeEvent] = []
        self.formats: dict[str, EventFormat] = {}
        self.owned = Ownership(group, instance)
        self.vanished: set[str] = set()  # our events someone else removed while we ran
        self.stop_started: float | None = None

    def __enter__(self) -> ProbeSession:
        try:
            claim(self.tracefs, self.owned, self._create, self._remove_leftovers)
            self.estimate_stop()
            for ev in unique_events(self.events):  # a USDT or RET-instruction event has one command per site
                self.formats[ev.event] = self._read_format(ev)
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

    def add(self, events: list[ProbeEvent]) -> dict[str, EventFormat]:
        """Register more events at run time (a discovered file), with their filters, not yet enabled;
        returns their formats. Events registered here are removed at ``close`` with the others. On a
        failure, what of them was registered is removed at once (never enabled: removing it does not
        touch the instance's buffer) and the error raised. The first events of a group that had none
        (only discover probes) make the group: it is made and locked under the claim lock, as at start,
        and refused (OwnershipError) if someone else made a group of that name meanwhile."""
        group_dir = self.tracefs.group_dir(self.group)
        if self.owned.holds(group_dir):
            return self._add(events)
        with self.tracefs.claim_lock():
            if group_dir.exists():
                raise OwnershipError(f"exporter.group '{self.group}' was made by someone else while we ran: "
                                     "not adding events to it", path=str(group_dir))
            formats = self._add(events)
            self.owned.take_group(self.tracefs)
        return formats

    def _read_format(self, ev: ProbeEvent) -> EventFormat:
        """The registered event's format, marked when the event ends a call (``ProbeEvent.ends_call``)."""
        fmt = parse_format(self.instance.read_format(self.group, ev.event))
        return replace(fmt, ends_call=True) if ev.ends_call else fmt

    def _add(self, events: list[ProbeEvent]) -> dict[str, EventFormat]:
        done: list[ProbeEvent] = []
        formats: dict[str, EventFormat] = {}
        try:
            for ev in events:
                try:
                    self.tracefs.write_uprobe_events(ev.command)
                except KernelRefusedError as exc:
                    refused = _explain_ref_ctr(self.tracefs, ev, exc)
                    raise ProbeRefusedError(ev.location or ev.full_name, refused) from exc
                done.append(ev)
            for ev in unique_events(events):
                formats[ev.event] = self._read_format(ev)
                if ev.filter:
                    self.instance.set_filter(self.group, ev.event, ev.filter)
        except TracefsError:
            remove_events(self.tracefs, self.group, [ev.event for ev in reversed(unique_events(done))], None)
            raise
        self.registered.extend(done)
        self.formats.update(formats)
        return formats

    def set_enabled(self, events: list[ProbeEvent], enabled: bool) -> None:
        """Enable or disable events at run time (disabling costs an RCU grace period per event)."""
        for ev in unique_events(events):
            self.instance.set_enabled(self.group, ev.event, enabled)

    def _remove_leftovers(self) -> list[str]:
        """What ``claim`` found and locked: the group's events, our (recognised) instance."""
        removed: list[str] = []
        if self.owned.holds(self.tracefs.group_dir(self.group)):
            removed += remove_group(self.tracefs, self.group)
        if self.owned.holds(self.instance.root):
            removed += remove_events(self.tracefs, self.group, [], self.instance)
        return removed

    def _create(self) -> None:
        """Under the claim lock: configure our fresh instance and register our events (milliseconds)."""
        self.instance.configure(self.buffer_size_kb)
        for ev in self.events:
            try:
                self.tracefs.write_uprobe_events(ev.command)
            except KernelRefusedError as exc:
                refused = _explain_ref_ctr(self.tracefs, ev, exc)
                raise ProbeRefusedError(ev.location or ev.full_name, refused) from exc
            self.registered.append(ev)

    def estimate_stop(self) -> float:
        """Seconds the stop needs; warns when it exceeds the budget. The per-event cost is measured
        here (one event on a file nobody runs, enabled, disabled and removed twice) only when the
        configured events might not fit even at a pessimistic cost."""
        n = len(unique_events(self.events)) + self.discover_events_max  # a USDT event's sites go with it
        if n * PESSIMISTIC_STOP_COST_S + STOP_FIXED_S <= self.stop_budget_seconds:
            return n * EVENT_STOP_COST_S * STOP_MARGIN + STOP_FIXED_S
        cost, how = self._measure_event_cost(), "measured now"
        if cost is None:
            cost, how = EVENT_STOP_COST_S, "assumed"
        need = n * cost * STOP_MARGIN + STOP_FIXED_S
        if need > self.stop_budget_seconds:
            log.warning("removing %d events takes about %.0f s (%.0f ms each, %s), more than "
                        "exporter.stop_budget_seconds = %g: a SIGKILL at the end of the grace period would "
                        "leave probes armed until the next start or 'uprobe-exporter cleanup'; give the stop "
                        "at least %.0f s (stop_budget_seconds, TimeoutStopSec, terminationGracePeriodSeconds) or "
                        "probe fewer functions", n, need, cost * 1000, how, self.stop_budget_seconds, need + 1)
        else:
            log.info("removing %d events takes about %.0f s (%.0f ms each, %s): within the stop budget of %g s",
                     n, need, cost * 1000, how, self.stop_budget_seconds)
        return need

    def _measure_event_cost(self, samples: int = 2) -> float | None:
        """Disable + remove of one uprobe event, in seconds: an event on a file of this package (a
        regular file no process maps executable, so no breakpoint is ever written) in our group,
        enabled in our instance, before our own events are (removing it clears the buffer)."""
        path = Path(uprobe_exporter.__file__ or "")
        if not path.is_file() or any(c.isspace() or c == "#" for c in str(path)):
            return None
        total = 0.0
        try:
            for _ in range(samples):
                self.tracefs.write_uprobe_events(f"p:{self.group}/{CALIBRATION_EVENT} {path}:0x0")
                try:
                    self.instance.set_enabled(self.group, CALIBRATION_EVENT, True)
                    start = time.monotonic()
                    self.instance.set_enabled(self.group, CALIBRATION_EVENT, False)
                finally:
                    remove_event(self.tracefs, removal_command(self.group, CALIBRATION_EVENT), self.group,
                                 CALIBRATION_EVENT)
                total += time.monotonic() - start
        except TracefsError as exc:
            log.debug("could not measure the cost of removing an event: %s", exc)
            return None
        return total / samples

    def check_present(self) -> list[str]:
        """Our events that vanished since the last call (someone disabled and removed them, or removed
        our instance): logged here, kept in ``vanished``."""
        present = {(e.group, e.event) for e in self.tracefs.read_uprobe_events()}
        # Our instance removed, or our group emptied (its directory made again by someone else's event):
        # whatever is there now is not ours.
        all_gone = not self.owned.holds(self.instance.root) or not self.owned.holds(self.tracefs.group_dir(self.group))
        gone = [ev.full_name for ev in unique_events(self.registered)
                if ev.full_name not in self.vanished and (all_gone or (ev.group, ev.event) not in present)]
        if gone:
            self.vanished.update(gone)
            log.error("%d of our events vanished (removed by someone else): %s; %d of %d still registered",
                      len(gone), ", ".join(gone[:5]) + (" ..." if len(gone) > 5 else ""),
                      len(unique_events(self.registered)) - len(self.vanished), len(unique_events(self.registered)))
        return gone

    def stop_recording(self) -> None:
        """Stop recording into our buffer at once (the probes stay armed until ``close``); the caller
        drains what the buffer holds before ``close``."""
        self.stop_started = time.monotonic()
        if self.instance.exists():
            try:
                self.instance.set_tracing_on(False)
            except TracefsError as exc:
                log.error("%s", exc)

    def _removal_order(self) -> list[str]:
        """Our events, hottest first (``uprobe_profile`` hits): the busiest breakpoints go first."""
        events = [ev.event for ev in reversed(unique_events(self.registered))]  # USDT: a command per site
        try:
            hits: dict[str, int] = {}
            for e, n in self.tracefs.read_uprobe_hits():  # an event with several sites: their hits summed
                if e.group == self.group:
                    hits[e.event] = hits.get(e.event, 0) + n
        except (TracefsError, TraceParseError) as exc:  # only an order: never in the way of the removal
            log.debug("removal order without hit counts: %s", exc)
            return events
        return sorted(events, key=lambda e: -hits.get(e, 0))

    def close(self) -> None:
        """Disable and remove each of our events in turn (hottest first), then our instance; release our
        locks. Drain between ``stop_recording`` and this."""
        start = self.stop_started or time.monotonic()
        begin = time.monotonic()
        events = self._removal_order()
        if self.registered and not self.owned.holds(self.tracefs.group_dir(self.group)):
            # Our group was emptied by someone else, and events of that name may now be another's.
            log.error("our group %s was removed while we ran: removing none of its events", self.group)
            events = []
        ours = self.instance if self.owned.holds(self.instance.root) else None  # never another's
        if ours is not None and self.stop_started is None and events:
            try:  # an error path that skipped stop_recording: nothing more is recorded while we remove
                ours.set_tracing_on(False)
            except TracefsError as exc:
                log.debug("%s", exc)
        try:
            removed = remove_events(self.tracefs, self.group, events, ours, everywhere=ours is None,
                                    progress=PROGRESS_SECONDS)
        finally:
            self.registered.clear()
            self.owned.release()
        if events and self.stop_started is not None:  # a stop, not a start that failed (one error line)
            took = time.monotonic() - begin
            n = sum(not r.startswith("instances/") for r in removed)
            log.info("removed %d events in %.1f s (%.0f ms each)", n, took, 1000 * took / max(n, 1))
            total = time.monotonic() - start
            if total > self.stop_budget_seconds:
                log.warning("the stop took %.1f s, more than exporter.stop_budget_seconds = %g", total,
                            self.stop_budget_seconds)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        if self.registered or self.owned.locks:
            self.close()
