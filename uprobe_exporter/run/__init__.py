"""Stage 6, run: the readers, the JSON sink, the metrics server, discovery and the daemon that wires the
stages."""
