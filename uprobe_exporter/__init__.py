"""uprobe_exporter: Linux uprobes through tracefs, as JSON lines and Prometheus metrics."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# The data flow, one package per stage, in order: a module imports only from its own stage, an earlier
# one, or the root's errors and backend modules (tests/unit/test_layering.py derives its rules from this).
STAGES = ("plan", "kernel", "processes", "decode", "pipeline", "run")

# UPROBE_EXPORTER_PURE=1: every `import uprobe_exporter._native` fails, so each stage takes its Python
# reference (nativestatus.py reports it as switched off on purpose).
if _os.environ.get("UPROBE_EXPORTER_PURE", "") not in ("", "0"):
    _sys.modules[f"{__name__}._native"] = None  # type: ignore[assignment]
