"""Pure: compiles a small generated function, the technique of ``collections.namedtuple``.

The per-event parsers (``traceline``) and record builders (``rawpage``) are written out as Python source
once per event, with each field's conversion inline, because a Python call per field is most of the
cost of a record. This is the one place that runs generated code; its source is registered in
``linecache`` (as ``collections.namedtuple`` and ``dataclasses`` do not, but ``attrs`` does), so a
traceback through it shows the generated line.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable
from typing import Any


def compile_function(source: str, name: str, label: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    """Run ``source`` (which defines ``name``) in ``namespace``; ``label`` names it in tracebacks."""
    filename = f"<{label}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    function: Callable[..., Any] = namespace[name]
    return function
