"""Pure data: the names and sizes the exporter and the kernel agree on, in one place.

The exporter adds hidden fetchargs to every event it registers (``probes.py`` writes them); both
decoders (``decode/traceline.py`` for text, ``decode/unpack.py`` for raw pages) and the native
emitter's plan (``pipeline/rawemit.py``) read them back by these names. The kernel's own fields of a
uprobe event (``trace_uprobe.c``) and of every event (``common_*``) are named here too.
"""

from __future__ import annotations

# The kernel's fields (kernel/trace/trace_uprobe.c, kernel/trace/trace_events.c)
COMMON_PID = "common_pid"  # the thread id
COMMON_FIELDS = (COMMON_PID, "common_type", "common_flags", "common_preempt_count")
PROBE_IP = "__probe_ip"  # an entry (`p:`) event: the probed address
PROBE_FUNC = "__probe_func"  # a return (`r:`) event: the function's address
PROBE_RET_IP = "__probe_ret_ip"  # a return (`r:`) event: the address it returns to
PROBE_FIELDS = frozenset({PROBE_IP, PROBE_FUNC, PROBE_RET_IP})
TASK_COMM_LEN = 16  # include/linux/sched.h: a thread's name is at most 15 bytes and a NUL
COMM_LEN = TASK_COMM_LEN - 1

# The exporter's hidden fields, on every event: the thread's name when it hit the probe (the text comm
# column is a read-time cache lookup that often prints ``<...>``), and %sp, to pair an entry with its return
HIDDEN_COMM = "__comm"
HIDDEN_SP = "__sp"
# On returns seen at RET instructions: %sp there (8 lower than a uretprobe sees it), the address the RET
# returns to, and how far the site is from the function's start (an immediate per site; also on Go
# entries placed after the stack check)
HIDDEN_SP_RET, HIDDEN_RET_ADDR, HIDDEN_IP_DELTA = "__sp_ret", "__ret_addr", "__ip_delta"
# Go programs (ABIInternal, amd64): %r14 is the current g, whose stack.hi is 8 bytes into it
HIDDEN_G, HIDDEN_G_HI = "__g", "__g_hi"
GOSTRING_LEN_PREFIX = "__len_"  # the hidden field with the length of the Go string argument NAME: __len_NAME
# what the decoders turn into a record's ip, ret_ip, pairing sp and key (decode/hidden.py)
HIDDEN_DERIVED = frozenset({HIDDEN_SP, HIDDEN_SP_RET, HIDDEN_RET_ADDR, HIDDEN_IP_DELTA, HIDDEN_G, HIDDEN_G_HI})
EXPORTER_FIELDS = (HIDDEN_COMM, HIDDEN_SP)  # what a filter of any function's event may name besides its own

# x86-64
RETURN_ADDRESS_SIZE = 8  # `ret` pops the return address: after a return %sp is this much higher
GO_STACK_TOP = 1 << 62  # Go: a frame's sp for pairing is GO_STACK_TOP − (g.stack.hi − sp): deeper is lower
