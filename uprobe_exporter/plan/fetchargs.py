"""Pure checks of uprobe ``fetchargs`` (Documentation/trace/uprobetracer.rst) before the kernel sees them.

The kernel stays the authority: what passes here may still be refused, and then its ``error_log``
text is reported. These checks catch the common mistakes early, all at once, with a location.
"""

from __future__ import annotations

import difflib
import re

from uprobe_exporter.plan.kernelabi import GOSTRING_LEN_PREFIX

# x86-64 register names accepted by regs_query_register_offset() (arch/x86/kernel/ptrace.c).
REGISTERS = frozenset({
    "ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "ip", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "flags", "cs", "ss", "ds", "es", "fs", "gs", "orig_ax",
})
_BASIC = r"(?:[usx](?:8|16|32|64)|char|string|ustring|symbol|symstr|b\d+@\d+/\d+)"
TYPE_RE = re.compile(rf"(?P<base>{_BASIC})(?:\[(?P<n>\d+)\])?\Z")
DEREF_RE = re.compile(r"[+-]u?(?:0x[0-9a-fA-F]+|\d+)\((?P<inner>.+)\)\Z")
MAX_ARRAY_LEN = 64  # trace_probe.h
# A Go string (pointer, length) read exactly: ``%ax:gostring`` (the length in the next register of Go's
# ABIInternal order) or ``+16(%ax):gostring`` (the length 8 bytes after the pointer), up to N bytes
# (``:gostring[N]``, default 64): the bytes as an array of x64 words and the length as a hidden field.
GOSTRING_RE = re.compile(r"(?P<body>.+):gostring(?:\[(?P<n>\d+)\])?\Z")
GO_INT_REGISTERS = ("ax", "bx", "cx", "di", "si", "r8", "r9", "r10", "r11")  # ABIInternal, amd64
GOSTRING_BYTES, GOSTRING_MAX_BYTES = 64, 8 * MAX_ARRAY_LEN
TYPE_NAMES = (*(f"{k}{b}" for k in "usx" for b in (8, 16, 32, 64)), "char", "string", "ustring")
C_TYPES = {"int": "s32", "long": "s64", "unsigned": "u32", "short": "s16", "bool": "u8", "size_t": "u64",
           "ssize_t": "s64", "ptr": "x64", "pointer": "x64", "str": "string", "char*": "string"}


def split_type(fetcharg: str) -> tuple[str, str]:
    """``'+0(%di):string'`` → ``('+0(%di)', 'string')``; no type → ``(fetcharg, '')``."""
    body, sep, kind = fetcharg.rpartition(":")
    if sep and TYPE_RE.match(kind):
        return body, kind
    return fetcharg, ""


def _check_body(body: str, is_return: bool) -> str | None:
    if body.startswith("%"):
        return None if body[1:] in REGISTERS else f"unknown register '{body}' (x86-64: %di, %si, %ax, ...)"
    if body == "$retval":
        return None if is_return else "$retval is only available in return_args (a return probe)"
    if body in ("$comm", "$COMM", "$stack") or re.fullmatch(r"\$stack\d+", body):
        return None
    if body.startswith(("@+", "@0x")) or re.fullmatch(r"@\d+", body):
        return None
    if body.startswith("@"):
        return "symbols (@SYM) are not available with uprobes; use @+FILE_OFFSET or a register"
    if body.startswith("\\"):
        return None
    if (m := DEREF_RE.match(body)) is not None:
        return _check_body(m["inner"], is_return)
    if body.startswith("$arg"):
        return "$argN needs BTF, which uprobes do not have; use the register (%di, %si, %dx, %cx, %r8, %r9)"
    return f"'{body}' is not a fetcharg (%REG, @ADDR, @+OFFSET, $stackN, $retval, $comm, +OFF(FETCHARG))"


def expand_gostring(name: str, fetcharg: str) -> tuple[tuple[str, str], tuple[str, str]] | str | None:
    """A ``:gostring`` argument as the two fetchargs the kernel reads, ``(NAME, +0(PTR):x64[W])`` and
    ``(__len_NAME, LEN:s64)``; a problem (str); or None when ``fetcharg`` is not a gostring."""
    m = GOSTRING_RE.match(fetcharg)
    if m is None:
        return None
    body, size = m["body"], int(m["n"] or GOSTRING_BYTES)
    if not 0 < size <= GOSTRING_MAX_BYTES:
        return f"'{fetcharg}': a gostring reads 1..{GOSTRING_MAX_BYTES} bytes"
    if body.startswith("%"):
        reg = body[1:]
        if reg not in GO_INT_REGISTERS[:-1]:
            return (f"'{fetcharg}': a Go string in registers is a pointer in one of {', '.join(GO_INT_REGISTERS[:-1])} "
                    "and its length in the next one (ABIInternal order)")
        length = "%" + GO_INT_REGISTERS[GO_INT_REGISTERS.index(reg) + 1]
    elif (d := re.fullmatch(r"(?P<sign>[+-])(?P<u>u?)(?P<off>0x[0-9a-fA-F]+|\d+)\((?P<inner>.+)\)", body)) is not None:
        off = int(d["off"], 0) * (-1 if d["sign"] == "-" else 1) + 8
        length = f"{'+' if off >= 0 else '-'}{d['u']}{abs(off)}({d['inner']})"
    else:
        return f"'{fetcharg}': a gostring is %REG:gostring or +OFF(FETCHARG):gostring (the string header in memory)"
    words = (size + 7) // 8
    return (name, f"+0({body}):x64[{words}]"), (f"{GOSTRING_LEN_PREFIX}{name}", f"{length}:s64")


def check_fetcharg(fetcharg: str, *, is_return: bool) -> str | None:
    """Return a one-line problem with ``fetcharg`` and how to fix it, or None if it looks right."""
    if not fetcharg or any(c.isspace() for c in fetcharg) or "#" in fetcharg:
        return f"'{fetcharg}' must be non-empty, without spaces or '#'"
    go = expand_gostring("x", fetcharg)
    if isinstance(go, str):
        return go
    if go is not None:
        return check_fetcharg(go[0][1], is_return=is_return) or check_fetcharg(go[1][1], is_return=is_return)
    body, kind = split_type(fetcharg)
    if ":" in body and not body.startswith("\\"):
        written = body.rpartition(":")[2]
        base = written.partition("[")[0]
        close = [C_TYPES[base]] if base in C_TYPES else difflib.get_close_matches(base, TYPE_NAMES, n=1, cutoff=0.5)
        if close:
            return f"unknown type '{written}' in '{fetcharg}'; did you mean '{close[0]}'?"
        return f"unknown type in '{fetcharg}'; use u8..u64, s8..s64, x8..x64, char, string or b<W>@<O>/<C>"
    if (err := _check_body(body, is_return)) is not None:
        return err
    m = TYPE_RE.match(kind) if kind else None
    base = m["base"] if m else ""
    memory = body.startswith(("+", "-", "@", "\\")) or body in ("$comm", "$COMM")
    if base in ("string", "ustring") and not memory:
        return f"'{fetcharg}': a string must be read from memory, e.g. '+0({body}):{base}'"
    if base in ("string", "ustring") and m is not None and m["n"] is not None:  # "__data_loc char[][N]"
        return f"'{fetcharg}': arrays of strings cannot be decoded; read each string with its own argument"
    if base in ("symbol", "symstr"):
        return f"'{fetcharg}': {base} resolves kernel symbols only; use x64 for a user address"
    if body in ("$comm", "$COMM") and base not in ("", "string"):
        return f"'{fetcharg}': $comm is a string; write '$comm' or '$comm:string'"
    if m and m["n"] is not None:
        if not body.startswith(("+", "-", "@")):
            return f"'{fetcharg}': an array must be read from memory, e.g. '+0({body}):{kind}'"
        if not 0 < int(m["n"]) <= MAX_ARRAY_LEN:
            return f"'{fetcharg}': array length must be 1..{MAX_ARRAY_LEN}"
    return None


# Fetchargs that mainline kernels took only from some version on (kernel/trace/trace_probe.c history). A kernel
# that refuses one is told apart from a plain mistake by its release: the refusal then names the version needed.
# (Not checked before registering: distribution kernels backport such features; the kernel decides.)
NEWER_FETCHARGS: tuple[tuple[re.Pattern[str], str, tuple[int, int]], ...] = (
    (re.compile(r"=\S*:char(?:\[\d+\])?(?:\s|\Z)"), "the 'char' fetcharg type", (6, 3)),  # ce9c752ee1e7
    (re.compile(r"=\S*:ustring(?:\[\d+\])?(?:\s|\Z)"), "the 'ustring' fetcharg type", (5, 5)),  # 88903c464321
    (re.compile(r"^[pr]:\S+ \S+:0x[0-9a-f]+\(0x[0-9a-f]+\)"), "a USDT semaphore (ref_ctr_offset)", (4, 20)),
)


def kernel_release_version(release: str) -> tuple[int, int] | None:
    """``'5.10.0-32-cloud-amd64'`` → ``(5, 10)``; None when ``release`` does not start with a version."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m[1]), int(m[2])) if m else None


def too_new_for_kernel(command: str, release: str) -> str | None:
    """Why a refused ``uprobe_events`` command may be this kernel's age: the first feature it uses that
    mainline added after ``release`` (``uname -r``), with the version needed; else None."""
    running = kernel_release_version(release)
    if running is None:
        return None
    for pattern, what, needed in NEWER_FETCHARGS:
        if running < needed and pattern.search(command):
            return f"{what} needs Linux {needed[0]}.{needed[1]} or later; this kernel is {release}"
    return None
