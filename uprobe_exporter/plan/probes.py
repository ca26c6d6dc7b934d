"""Pure: a configured, resolved probe → the ``uprobe_events`` commands and event names we own.

Every event carries two fetchargs the exporter adds itself: ``__comm=$comm`` (the thread's name in
the record, since the text comm column is a read-time cache lookup that often prints ``<...>``) and
``__sp=%sp:x64`` (the stack pointer: at a function's first instruction it points at the return
address, and after the return it is 8 bytes higher, so an entry and its return pair exactly, even
under recursion, longjmp or exceptions).
"""

from __future__ import annotations

from dataclasses import dataclass

from uprobe_exporter.errors import ResolveError
from uprobe_exporter.plan.config import ProbeConfig
from uprobe_exporter.plan.fetchargs import expand_gostring
from uprobe_exporter.plan.filters import combine_filters, comm_filter
from uprobe_exporter.plan.kernelabi import (
    HIDDEN_COMM,
    HIDDEN_G,
    HIDDEN_G_HI,
    HIDDEN_IP_DELTA,
    HIDDEN_RET_ADDR,
    HIDDEN_SP,
    HIDDEN_SP_RET,
)

HIDDEN_FETCHARGS = f"{HIDDEN_COMM}=$comm {HIDDEN_SP}=%sp:x64"  # names: kernelabi.py
# A return seen at a RET instruction (``return_via = "ret_instructions"``, a `p:` probe per RET): %sp still
# points at the return address there, as at the entry (a uretprobe sees it 8 higher): ``__sp_ret`` says
# which kind of return the pairing sees; ``__ret_addr`` is the address the RET returns to; ``__ip_delta``
# (an immediate per site) is how far the site is from the function's start, so ``func`` is the function's.
RET_HIDDEN_FETCHARGS = f"{HIDDEN_COMM}=$comm {HIDDEN_SP_RET}=%sp:x64 {HIDDEN_RET_ADDR}=+0(%sp):x64"
# Go (ABIInternal, amd64): %r14 is the current g, and runtime.g begins with stack{lo, hi}: calls pair by
# goroutine (g) and by hi − sp, which stays the same when the goroutine's stack is copied (grown).
GO_FETCHARGS = f"{HIDDEN_G}=%r14:x64 {HIDDEN_G_HI}=+8(%r14):x64"
# A USDT site is not a function's first instruction: %sp says nothing about which call a return ends
# (CPython 3.11 runs nested Python calls in one C frame). The constant 0 makes pairing take the
# innermost open entry of the thread (pairing.py: no stack pointer, LIFO order).
USDT_HIDDEN_FETCHARGS = f"{HIDDEN_COMM}=$comm {HIDDEN_SP}=\\0:x64"
ENTRY_SUFFIX = "_entry"
RETURN_SUFFIX = "_return"


@dataclass(frozen=True, slots=True)
class ProbeEvent:
    """One kernel event we create: ``<group>/<probe>_entry`` or ``<group>/<probe>_return``."""

    probe: str
    group: str
    event: str
    is_return: bool
    path: str
    offset: int
    command: str
    filter: str
    location: str = ""  # where it comes from in the configuration: 'probes[2] "malloc"'
    usdt: bool = False  # a USDT site: a `p:` probe, also for the return event (which has __probe_ip)
    at_ret: bool = False  # a return seen by a `p:` probe on a RET instruction of the function

    @property
    def full_name(self) -> str:
        return f"{self.group}/{self.event}"

    @property
    def ends_call(self) -> bool:
        """A ``p:`` event that ends a call (a USDT return, a return seen at RET instructions): its format
        has no ``__probe_ret_ip`` to say so (EventFormat.ends_call)."""
        return (self.usdt or self.at_ret) and self.is_return


@dataclass(frozen=True, slots=True)
class ResolvedProbe:
    """A probe from the configuration with its binary and file offset found."""

    config: ProbeConfig
    path: str
    offset: int
    # a USDT probe: per site of the entry (``usdt``) and of the return (``return_usdt``), its file offset,
    # semaphore file offset and translated fetchargs ("name=fetcharg ...")
    sites: tuple[tuple[int, int | None, str], ...] = ()
    return_sites: tuple[tuple[int, int | None, str], ...] = ()
    entry_delta: int = 0  # the entry probe is this far into the function (Go: after the stack check)
    ret_sites: tuple[tuple[int, int], ...] = ()  # return_via RET instructions: (file offset, offset in the function)
    goroutines: bool = False  # Go: pair by goroutine (g in %r14) and by the stack offset from its top


def _fetchargs(args: tuple[tuple[str, str], ...]) -> str:
    out = []
    for name, fetcharg in args:
        go = expand_gostring(name, fetcharg)  # a Go string: its bytes and, hidden, its length
        out += [f" {n}={f}" for n, f in go] if isinstance(go, tuple) else [f" {name}={fetcharg}"]
    return "".join(out)


def build_events(probe: ResolvedProbe, group: str, where: str = "", base: str = "") -> list[ProbeEvent]:
    """The events of one probe, in the order they must be registered; ``where`` is its config location,
    ``base`` the event names' stem when it is not the probe's name (a discovered file: ``<probe>_F<n>``)."""
    if any(c.isspace() for c in probe.path) or "#" in probe.path:
        raise ResolveError(f"the kernel cannot take a path with whitespace or '#': {probe.path!r}",
                           binary=probe.path)
    cfg = probe.config
    base = base or cfg.name
    if cfg.usdt:
        return _usdt_events(probe, group, where, base)
    target = f"{probe.path}:{probe.offset:#x}"
    by_comm = comm_filter(cfg.comm)  # on both events: a return is recorded only where its entry could be
    entry = f"{base}{ENTRY_SUFFIX}"
    go = f" {GO_FETCHARGS}" if probe.goroutines else ""
    delta = f" {HIDDEN_IP_DELTA}=\\{probe.entry_delta}:u32" if probe.entry_delta else ""
    events = [ProbeEvent(cfg.name, group, entry, False, probe.path, probe.offset,
                         f"p:{group}/{entry} {target} {HIDDEN_FETCHARGS}{go}{delta}{_fetchargs(cfg.args)}",
                         combine_filters(by_comm, cfg.filter), where)]
    if cfg.return_probe and probe.ret_sites:
        ret = f"{base}{RETURN_SUFFIX}"
        events.extend(ProbeEvent(
            cfg.name, group, ret, True, probe.path, offset,
            f"p:{group}/{ret} {probe.path}:{offset:#x} {RET_HIDDEN_FETCHARGS}{go} {HIDDEN_IP_DELTA}=\\{into}:u32"
            f"{_fetchargs(cfg.return_args)}", combine_filters(by_comm, cfg.return_filter), where, at_ret=True)
            for offset, into in probe.ret_sites)
    elif cfg.return_probe:
        ret = f"{base}{RETURN_SUFFIX}"
        events.append(ProbeEvent(
            cfg.name, group, ret, True, probe.path, probe.offset,
            f"r:{group}/{ret} {target} {HIDDEN_FETCHARGS}{_fetchargs(cfg.return_args)}",
            combine_filters(by_comm, cfg.return_filter),
            where))
    return events


def _usdt_events(probe: ResolvedProbe, group: str, where: str, base: str) -> list[ProbeEvent]:
    """One ``p:`` command per site; the kernel adds the sites of one event name to that event (they
    must have the same argument names and types: stapsdt.site_fetchargs makes them agree)."""
    cfg = probe.config
    by_comm = comm_filter(cfg.comm)  # on both events, as for functions
    events = []
    for suffix, sites, flt, is_return in ((ENTRY_SUFFIX, probe.sites, cfg.filter, False),
                                          (RETURN_SUFFIX, probe.return_sites, cfg.return_filter, True)):
        event = f"{base}{suffix}"
        for offset, ref_ctr, fetchargs in sites:
            ref = f"({ref_ctr:#x})" if ref_ctr is not None else ""
            args = f" {fetchargs}" if fetchargs else ""
            events.append(ProbeEvent(cfg.name, group, event, is_return, probe.path, offset,
                                     f"p:{group}/{event} {probe.path}:{offset:#x}{ref} {USDT_HIDDEN_FETCHARGS}{args}",
                                     combine_filters(by_comm, flt), where, usdt=True))
    return events


def unique_events(events: list[ProbeEvent]) -> list[ProbeEvent]:
    """The first command of each event name (a USDT event has one command per site)."""
    seen: dict[str, ProbeEvent] = {}
    for ev in events:
        seen.setdefault(ev.event, ev)
    return list(seen.values())


def removal_command(group: str, event: str) -> str:
    return f"-:{group}/{event}"
