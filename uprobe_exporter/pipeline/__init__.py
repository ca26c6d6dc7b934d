"""Stage 5, pipeline: records counted, paired into calls, put in latency histograms and rendered as
JSON lines."""
