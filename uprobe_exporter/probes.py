"""Pure: a configured, resolved probe → the ``uprobe_events`` commands and event names we own.

Every event carries two fetchargs the exporter adds itself: ``__comm=$comm`` (the thread's name in
the record, since the text comm column is a read-time cache lookup that often prints ``<...>``) and
``__sp=%sp:x64`` (the stack pointer: at a function's first instruction it points at the return
address, and after the return it is 8 bytes higher, so an entry and its return pair exactly, even
under recursion, longjmp or exceptions).
"""

from __future__ import annotations

from dataclasses import dataclass

from uprobe_exporter.config import ProbeConfig
from uprobe_exporter.errors import ResolveError
from uprobe_exporter.filters import combine_filters, comm_filter

HIDDEN_FETCHARGS = "__comm=$comm __sp=%sp:x64"
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

    @property
    def full_name(self) -> str:
        return f"{self.group}/{self.event}"


@dataclass(frozen=True, slots=True)
class ResolvedProbe:
    """A probe from the configuration with its binary and file offset found."""

    config: ProbeConfig
    path: str
    offset: int


def _fetchargs(args: tuple[tuple[str, str], ...]) -> str:
    return "".join(f" {name}={fetcharg}" for name, fetcharg in args)


def build_events(probe: ResolvedProbe, group: str, where: str = "") -> list[ProbeEvent]:
    """The events of one probe, in the order they must be registered; ``where`` is its config location."""
    if any(c.isspace() for c in probe.path) or "#" in probe.path:
        raise ResolveError(f"the kernel cannot take a path with whitespace or '#': {probe.path!r}",
                           binary=probe.path)
    cfg = probe.config
    target = f"{probe.path}:{probe.offset:#x}"
    by_comm = comm_filter(cfg.comm)  # on both events: a return is recorded only where its entry could be
    entry = f"{cfg.name}{ENTRY_SUFFIX}"
    events = [ProbeEvent(cfg.name, group, entry, False, probe.path, probe.offset,
                         f"p:{group}/{entry} {target} {HIDDEN_FETCHARGS}{_fetchargs(cfg.args)}",
                         combine_filters(by_comm, cfg.filter),
                         where)]
    if cfg.return_probe:
        ret = f"{cfg.name}{RETURN_SUFFIX}"
        events.append(ProbeEvent(
            cfg.name, group, ret, True, probe.path, probe.offset,
            f"r:{group}/{ret} {target} {HIDDEN_FETCHARGS}{_fetchargs(cfg.return_args)}",
            combine_filters(by_comm, cfg.return_filter),
            where))
    return events


def removal_command(group: str, event: str) -> str:
    return f"-:{group}/{event}"
