"""Pure: the kernel event filters of a probe, checked before the kernel sees them, and the ``comm`` key's filter.

A filter (``Documentation/trace/events.rst``, section 5) is predicates ``FIELD OP VALUE`` joined by ``&&``,
``||``, ``!`` and parentheses: ``size > 4096 && __comm == "nginx"``. Each FIELD must be a field of the
event it filters: the probe's arguments, the kernel's common fields, the probe's own (``__probe_ip`` on
an entry, ``__probe_func``/``__probe_ret_ip`` on a return), the exporter's ``__comm``/``__sp``, or the
kernel's generic ones (``comm``/``COMM``: the running thread's name; ``cpu``/``CPU``/``common_cpu``). The
kernel stays the authority on the rest (values, types); its ``error_log`` is reported when it refuses.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from uprobe_exporter.plan.kernelabi import (
    COMMON_FIELDS,
    EXPORTER_FIELDS,
    HIDDEN_COMM,
    PROBE_FUNC,
    PROBE_IP,
    PROBE_RET_IP,
    TASK_COMM_LEN,
)

GENERIC_FIELDS = ("comm", "COMM", "cpu", "CPU", "common_cpu", "stacktrace", "STACKTRACE")
ENTRY_FIELDS = (PROBE_IP,)
RETURN_FIELDS = (PROBE_FUNC, PROBE_RET_IP)
COMPARE_OPS = ("==", "!=", "<=", ">=", "<", ">", "&", "~")
THREAD_ID = ("common_pid (the thread id: a filter cannot name a process, whose threads have their own ids; "
             "comm = [...] matches thread names)")
HINTS = {"pid": THREAD_ID, "tid": THREAD_ID, "tgid": THREAD_ID, "process": THREAD_ID}
_TOKEN = re.compile(r"""\s*(?:(?P<string>"[^"]*"|'[^']*')|(?P<op>==|!=|<=|>=|&&|\|\||[<>&~!()])
                         |(?P<word>[^\s()&|!<>=~"']+))""", re.X)
_GLOB = re.compile(r"[*?\[]")


def event_fields(arg_names: Sequence[str], *, is_return: bool) -> tuple[str, ...]:
    """Every field name a filter of the probe's entry (or return) event may use."""
    own = RETURN_FIELDS if is_return else ENTRY_FIELDS
    return (*arg_names, *COMMON_FIELDS, *own, *EXPORTER_FIELDS, *GENERIC_FIELDS)


def filter_fields(expression: str) -> list[str]:
    """The field names ``expression`` compares, in order (``a > 1 && !(b == "x")`` → ``['a', 'b']``):
    each word right before a comparison operator. What does not tokenize is left to the kernel."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expression.rstrip()):
        m = _TOKEN.match(expression, pos)
        if m is None or m.end() == pos:
            break
        kind = m.lastgroup or ""
        tokens.append((kind, m[kind]))
        pos = m.end()
    return [tokens[i - 1][1] for i, (kind, text) in enumerate(tokens)
            if kind == "op" and text in COMPARE_OPS and i > 0 and tokens[i - 1][0] == "word"]


def check_filter(expression: str, fields: Sequence[str], event: str) -> list[str]:
    """A problem per field ``expression`` uses that ``event`` ('entry' or 'return') does not have."""
    problems = []
    for name in dict.fromkeys(filter_fields(expression)):
        if name not in fields:
            close = [HINTS[name]] if name in HINTS else [repr(c) for c in difflib.get_close_matches(name, fields, n=2)]
            hint = f"did you mean {' or '.join(close)}?" if close else f"its fields: {', '.join(fields)}"
            problems.append(f"the {event} event has no field '{name}'; {hint}")
    return problems


def check_comm(name: object) -> str | None:
    """A problem with one name of the ``comm`` key, or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string: a thread name such as \"nginx\""
    if '"' in name or any(ord(c) < 32 for c in name):
        return f"{name!r}: a thread name here holds no '\"' or control characters"
    size = len(name.encode())
    if size >= TASK_COMM_LEN and not _GLOB.search(name):
        cut = name.encode()[:TASK_COMM_LEN - 1].decode(errors="ignore")
        return (f"'{name}' is {size} bytes: the kernel keeps {TASK_COMM_LEN - 1} of a thread's name, so it "
                f"can never match; write '{cut}'")
    return None


def comm_filter(names: Sequence[str]) -> str:
    """The filter that keeps the records of threads named one of ``names`` (a glob with ``*?[``)."""
    preds = [f'{HIDDEN_COMM} {"~" if _GLOB.search(n) else "=="} "{n}"' for n in names]
    return " || ".join(preds)


def combine_filters(*filters: str) -> str:
    """Filters ANDed, each in parentheses when there is more than one; empty ones left out."""
    present = [f.strip() for f in filters if f.strip()]
    if len(present) <= 1:
        return present[0] if present else ""
    return " && ".join(f"({f})" for f in present)
