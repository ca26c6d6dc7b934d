"""uprobe_exporter: Linux uprobes through tracefs, as JSON lines and Prometheus metrics."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# UPROBE_EXPORTER_PURE=1: every `import uprobe_exporter._native` fails, so each stage takes its Python
# reference (nativestatus.py reports it as switched off on purpose).
if _os.environ.get("UPROBE_EXPORTER_PURE", "") not in ("", "0"):
    _sys.modules[f"{__name__}._native"] = None  # type: ignore[assignment]
