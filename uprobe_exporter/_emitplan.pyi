"""Native emitter (uprobe_exporter/_emitplan.c); see rawemit.native_emitter."""

from typing import Any

class EmitPlan:
    def __init__(self, emitter: Any, name: str, probe: str, fields: tuple[int, ...],
                 args: tuple[tuple[bytes, int, int, int], ...], pairing: int, sinks: tuple[Any, ...]) -> None: ...
    def __call__(self, page: bytes, offset: int, ts_ns: int, cpu: int) -> None: ...
