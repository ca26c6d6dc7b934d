"""Stage 4, decode: ``trace_pipe`` lines and ``trace_pipe_raw`` pages into records, the CPUs merged into
one time order."""
