"""fetchargs.check_fetcharg: what Documentation/trace/uprobetracer.rst accepts, and common mistakes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from uprobe_exporter.decode.hidden import go_string
from uprobe_exporter.plan.fetchargs import (
    check_fetcharg,
    expand_gostring,
    kernel_release_version,
    split_type,
    too_new_for_kernel,
)

KERNEL = Path(__file__).parent.parent / "fixtures" / "kernel"

ACCEPTED_ENTRY = [
    "%di", "%di:s32", "%si:u64", "%ax:x16", "%r8:s8", "%r15:x64", "%sp:x64", "%ip", "%flags:x32",
    "+0(%si):string", "+0(%si):ustring", "+8(%di):u32", "-4(%bp):s32", "+u0(%di):u8", "+0(+8(%di)):string",
    "+0(%si):char", "+0(%si):u8[4]", "+0(%si):u32[64]", "%di:b4@2/32", "%di:char",
    "$comm", "$comm:string", "$COMM", "$stack", "$stack0", "$stack12:x64",
    "@0x601040:u32", "@+0x1040:s64", "@4198464:u8", "@+0x10:string", "@+0x10:u16[2]",
]
ACCEPTED_RETURN_ONLY = ["$retval", "$retval:s32", "$retval:x64", "+0($retval):string", "+8($retval):u64"]

REFUSED = [  # (fetcharg, is_return, a word of the explanation)
    ("", False, "non-empty"),
    ("%di :s32", False, "without spaces"),
    ("%di#x", False, "'#'"),
    ("%nosuchreg:s32", False, "unknown register"),
    ("%DI", False, "unknown register"),
    ("+0(%rdi):string", False, "unknown register"),
    ("$retval", False, "only available in return_args"),
    ("+0($retval):string", False, "only available in return_args"),
    ("@malloc", False, "not available with uprobes"),
    ("$arg1", False, "BTF"),
    ("di", False, "is not a fetcharg"),
    ("+0(di):u32", False, "is not a fetcharg"),
    ("%di:float", False, "unknown type"),
    ("%di:s33", False, "unknown type"),
    ("%di:string", False, "must be read from memory"),
    ("$retval:string", True, "must be read from memory"),
    ("%di:symbol", False, "kernel symbols only"),
    ("+0(%di):symstr", False, "kernel symbols only"),
    ("$comm:u32", False, "$comm is a string"),
    ("%di:u8[4]", False, "must be read from memory"),
    ("+0(%si):u8[0]", False, "array length"),
    ("+0(%si):u8[65]", False, "array length"),
    ("+0(%si):string[2]", False, "arrays of strings"),  # the kernel takes it: "__data_loc char[][2]"
    ("+0(%si):ustring[3]", False, "arrays of strings"),
]


def test_the_captured_error_log_register_is_refused_here_too() -> None:
    """The kernel refused ``x=%nosuchreg:s32`` (error_log fixture); so does the early check."""
    command = next(line for line in (KERNEL / "error_log").read_text(encoding="utf-8").splitlines()
                   if line.strip().startswith("Command:"))
    fetcharg = command.split()[-1].split("=", 1)[1]
    problem = check_fetcharg(fetcharg, is_return=False)
    assert problem is not None
    assert "unknown register" in problem


@pytest.mark.parametrize("fetcharg", ACCEPTED_ENTRY)
def test_accepted_everywhere(fetcharg: str) -> None:
    assert check_fetcharg(fetcharg, is_return=False) is None
    assert check_fetcharg(fetcharg, is_return=True) is None


@pytest.mark.parametrize("fetcharg", ACCEPTED_RETURN_ONLY)
def test_accepted_in_return_probes_only(fetcharg: str) -> None:
    assert check_fetcharg(fetcharg, is_return=True) is None
    problem = check_fetcharg(fetcharg, is_return=False)
    assert problem is not None
    assert "return" in problem


@pytest.mark.parametrize(("fetcharg", "is_return", "word"), REFUSED)
def test_refused_with_an_explanation(fetcharg: str, is_return: bool, word: str) -> None:
    problem = check_fetcharg(fetcharg, is_return=is_return)
    assert problem is not None
    assert word in problem
    assert "\n" not in problem


@pytest.mark.parametrize(("fetcharg", "body", "kind"), [
    ("+0(%di):string", "+0(%di)", "string"),
    ("%di:b4@2/32", "%di", "b4@2/32"),
    ("+0(%si):u8[4]", "+0(%si)", "u8[4]"),
    ("%di", "%di", ""),
    ("%di:float", "%di:float", ""),
])
def test_split_type(fetcharg: str, body: str, kind: str) -> None:
    assert split_type(fetcharg) == (body, kind)


def test_gostring_expands_to_its_words_and_hidden_length() -> None:
    assert expand_gostring("name", "%ax:gostring") == (("name", "+0(%ax):x64[8]"), ("__len_name", "%bx:s64"))
    assert expand_gostring("s", "%r10:gostring[9]") == (("s", "+0(%r10):x64[2]"), ("__len_s", "%r11:s64"))
    assert expand_gostring("s", "+16(%ax):gostring[512]") == (("s", "+0(+16(%ax)):x64[64]"),
                                                              ("__len_s", "+24(%ax):s64"))
    assert expand_gostring("s", "-8(%sp):gostring") == (("s", "+0(-8(%sp)):x64[8]"), ("__len_s", "+0(%sp):s64"))
    assert expand_gostring("s", "%ax:string") is None
    for bad, text in (("%r11:gostring", "the next one"), ("%ax:gostring[0]", "1..512"),
                      ("%ax:gostring[513]", "1..512"), ("$stack1:gostring", "+OFF(FETCHARG):gostring")):
        assert text in str(check_fetcharg(bad, is_return=False)), bad


def test_go_string_is_sliced_to_its_length() -> None:
    words = list(struct.unpack("<2Q", b"ab\x00c\xffdefghijklmn"))  # 16 bytes read, 5 of them the string
    assert go_string(words, 5) == "ab\x00c\\xff"
    assert go_string(words, 0) == ""
    assert go_string(words, 40) == "ab\x00c\\xffdefghijklmn"  # longer than read: what was read
    assert go_string(words, -1) is None


def test_a_refusal_names_the_kernel_version_a_fetcharg_needs() -> None:
    char = "p:g/w_entry /bin/t:0x1149 __comm=$comm __sp=%sp:x64 c=+0(%si):char"
    assert too_new_for_kernel(char, "5.10.0-32-cloud-amd64") == \
        "the 'char' fetcharg type needs Linux 6.3 or later; this kernel is 5.10.0-32-cloud-amd64"
    assert too_new_for_kernel(char.replace(":char", ":char[4]"), "6.1.0-50-cloud-amd64") is not None
    assert too_new_for_kernel(char, "6.3.0") is None
    assert too_new_for_kernel(char, "6.12.117+deb13-cloud-amd64") is None
    assert too_new_for_kernel(char, "weird") is None
    assert too_new_for_kernel(char.replace(":char", ":u8"), "5.10.0") is None
    assert too_new_for_kernel(char.replace(":char", ":ustring"), "5.4.0-1") == \
        "the 'ustring' fetcharg type needs Linux 5.5 or later; this kernel is 5.4.0-1"
    usdt = "p:g/f_entry /usr/bin/python3.11:0xf20d4(0x683262) __comm=$comm"
    assert "USDT semaphore" in (too_new_for_kernel(usdt, "4.19.0-27-amd64") or "")
    assert too_new_for_kernel(usdt, "4.20.0") is None
    assert kernel_release_version("6.12.117+deb13-cloud-amd64") == (6, 12)
    assert kernel_release_version("") is None
