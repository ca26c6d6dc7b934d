"""Pure: what the exporter's hidden fields (plan/kernelabi.py) mean to a decoder, for the text parser
(``traceline.PayloadParser``) and the raw pages' unpacker (``unpack.UnpackPlan``) alike: expressions of a
record's ``ip``, ``ret_ip``, pairing ``sp`` and ``key``, and Go strings read as words and a length."""

from __future__ import annotations

import struct

from uprobe_exporter.plan.kernelabi import (
    GO_STACK_TOP,
    HIDDEN_G,
    HIDDEN_G_HI,
    HIDDEN_IP_DELTA,
    HIDDEN_RET_ADDR,
    HIDDEN_SP,
    HIDDEN_SP_RET,
    RETURN_ADDRESS_SIZE,
)


def hidden_values(exprs: dict[str, str], ip: str, ret_ip: str) -> tuple[str, str, str, str]:
    """The expressions of a record's ``ip``, ``ret_ip``, pairing ``sp`` and pairing ``key`` from those of
    its hidden fields (``exprs``, by field name) and of the kernel's ``ip``/``ret_ip``.

    ``sp`` is always as a uretprobe would see it at a return: at a RET instruction (``__sp_ret``) %sp
    still points at the return address, so it is 8 lower. In a Go program (``__g``, ``__g_hi``) calls
    pair by goroutine (``key``: its g) and by the frame's distance from the top of the goroutine's stack,
    which a stack copy keeps: ``sp`` is GO_STACK_TOP − (hi − %sp), so that deeper frames stay lower.
    ``key`` is the g ("0" without one: pair by thread), which pairing.GoroutineKeys turns into a key per
    process and goroutine."""
    if HIDDEN_IP_DELTA in exprs:
        ip = f"({ip} - {exprs[HIDDEN_IP_DELTA]})"
    ret_ip = exprs.get(HIDDEN_RET_ADDR, ret_ip)
    sp, at_ret = exprs.get(HIDDEN_SP), ""
    if sp is None and HIDDEN_SP_RET in exprs:
        sp, at_ret = exprs[HIDDEN_SP_RET], f" + {RETURN_ADDRESS_SIZE}"
    key = "0"
    if sp is None:
        sp = "0"
    elif HIDDEN_G_HI in exprs and HIDDEN_G in exprs:
        hi = exprs[HIDDEN_G_HI]  # 0: %r14 was not a g (its read faulted): pair by order then
        sp = f"(({GO_STACK_TOP} - {hi} + {sp}{at_ret}) if {hi} else 0)"
        key = exprs[HIDDEN_G]
    elif at_ret:
        sp = f"({sp}{at_ret})"
    return ip, ret_ip, sp, key


def go_string(words: list[int], length: int) -> str | None:
    """A Go string read as x64 words (fetchargs.py: gostring) and its length: its bytes sliced to the
    length (at most the words read), UTF-8 decoded with other bytes kept as ``\\xNN``; None if the
    length is negative (not a string)."""
    if length < 0:
        return None
    return struct.pack(f"<{len(words)}Q", *words)[:length].decode("utf-8", "backslashreplace")


def wrap_gostrings(args: list[tuple[str, str]], lengths: dict[str, str]) -> list[tuple[str, str]]:
    """The argument expressions with each Go string's words turned into its text (``_gostr``)."""
    return [(name, f"_gostr({expr}, {lengths[name]})" if name in lengths else expr) for name, expr in args]
