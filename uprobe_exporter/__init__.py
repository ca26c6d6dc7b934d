"""uprobe_exporter: Linux uprobes through tracefs, as JSON lines and Prometheus metrics."""

__version__ = "0.1.0"
