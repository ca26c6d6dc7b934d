"""The records that flow from the readers to the sinks; pure data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One uprobe hit as the kernel recorded it.

    ``tid`` is the kernel's ``common_pid`` (a thread id), ``tgid`` the process id (0 when the kernel
    did not know it), ``ts_ns`` the trace clock (``mono``) in nanoseconds. For an entry event ``ip`` is
    ``__probe_ip``; for a return event ``ip`` is ``__probe_func`` and ``ret_ip`` is ``__probe_ret_ip``.
    ``sp`` is the stack pointer the exporter fetches itself (``__sp``), used to pair calls exactly.
    """

    event: str
    tid: int
    tgid: int
    cpu: int
    ts_ns: int
    comm: str
    ip: int
    ret_ip: int
    is_return: bool
    sp: int
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LostEvents:
    """The kernel overwrote ``count`` events of ``cpu`` before we read them (None: count unknown)."""

    cpu: int
    count: int | None
