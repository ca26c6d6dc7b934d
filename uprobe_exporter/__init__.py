"""uprobe_exporter: Linux uprobes through tracefs, as JSON lines and Prometheus metrics."""

__version__ = "0.1.0"

# The data flow, one package per stage, in order: a module imports only from its own stage, an earlier
# one, or the root's errors and backend modules (tests/unit/test_layering.py derives its rules from this).
STAGES = ("plan", "kernel", "processes", "decode", "pipeline", "run")
