"""Native parts of the raw reader (uprobe_exporter/_native.c); see rawpage.RawDecoder.locate and
rawemit.native_emitter."""

from typing import Any

class EmitPlan:
    def __init__(self, emitter: Any, name: str, probe: str, fields: tuple[int, ...],
                 args: tuple[tuple[bytes, int, int, int], ...], pairing: int, sinks: tuple[Any, ...]) -> None: ...
    def __call__(self, page: bytes, offset: int, ts_ns: int, cpu: int) -> None: ...

def locate(page: bytes, cpu: int, out: list[Any], lost: list[Any], handlers: dict[int, Any],
           layout: tuple[int, int, int, int, int], errors: dict[str, int], lost_type: Any) -> int | None: ...

def run(located: list[Any], errors: dict[str, int], struct_error: type[Exception]) -> None: ...
