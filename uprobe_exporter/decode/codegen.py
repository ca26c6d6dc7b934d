"""Pure: compiles a small generated function, the technique of ``collections.namedtuple``.

The per-event parsers (``traceline``) and record builders (``rawpage``) are written out as Python source
once per event, with each field's conversion inline, because a Python call per field is most of the
cost of a record. This is the one place that runs generated code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def compile_function(source: str, name: str, label: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    """Run ``source`` (which defines ``name``) in ``namespace``; ``label`` names it in tracebacks."""
    exec(compile(source, f"<{label}>", "exec"), namespace)
    function: Callable[..., Any] = namespace[name]
    return function
