"""Stage 3, processes: who a thread is — its process (procfs), its mapped files, its cgroup and pod."""
