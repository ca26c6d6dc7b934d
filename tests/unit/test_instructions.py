"""The instruction decoder (instructions.py) on hand-assembled bytes and on real gcc and Go functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from uprobe_exporter.errors import ResolveError
from uprobe_exporter.plan.elf import load_elf, read_function_code
from uprobe_exporter.plan.instructions import calls_back_to_start, decode_function, find_ret_sites, go_entry_offset

# push rbp; mov rbp, rsp; test edi, edi; je +3; pop rbp; ret; pop rbp; ret 8
TWO_RETS = bytes.fromhex("55 4889e5 85ff 7402 5dc3 5dc20800")


def test_decodes_every_byte_with_offsets_sizes_and_rets() -> None:
    code = decode_function(TWO_RETS, 0x1000)
    assert code.complete
    assert [(i.offset, i.size, i.mnemonic) for i in code.instructions] == [
        (0, 1, "push"), (1, 3, "mov"), (4, 2, "test"), (6, 2, "je"), (8, 1, "pop"), (9, 1, "ret"),
        (10, 1, "pop"), (11, 3, "ret")]
    assert code.instructions[3].target == 0x100a and code.instructions[3].is_jump
    assert find_ret_sites(code, "f") == (9, 11)  # `ret imm16` too
    assert code.starts() == {0, 1, 4, 6, 8, 9, 10, 11}
    assert code.boundaries_around(2) == (1, 4)
    assert code.boundaries_around(12) == (11, None)


@pytest.mark.parametrize(("hexcode", "message"), [
    ("55 5d e9 00100000", "is a jump out of the function (to 0x3007)"),  # a tail call
    ("55 ffe0", "is an indirect jump, 'jmp rax'"),
    ("55 4889e5 e8 00000000 0f0b", "has no RET instruction"),  # call; ud2
    ("55 c3 0f", "does not decode as x86-64 instructions past byte 0x2 of 3"),
    ("", "has no size in the symbol table"),
])
def test_ret_sites_refused_when_not_every_exit_is_known(hexcode: str, message: str) -> None:
    with pytest.raises(ResolveError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_ret_sites(decode_function(bytes.fromhex(hexcode), 0x2000), "f")


def test_go_stack_check_prologue() -> None:
    # cmp rsp, [r14+0x10]; jbe 7; push rbp; ret; call 0; jmp start
    code = decode_function(bytes.fromhex("493b6610 7602 55 c3 e8 00000000 ebf1"), 0x3000)
    assert code.complete and go_entry_offset(code) == 6 and calls_back_to_start(code)
    # lea r12, [rsp-0x58]; cmp r12, [r14+0x10]; jbe ...: the big-frame form
    big = decode_function(bytes.fromhex("4c8d6424a8 4d3b6610 7602 55 c3 e8 00000000 ebec"), 0x3000)
    assert go_entry_offset(big) == 11
    assert go_entry_offset(decode_function(TWO_RETS, 0)) == 0  # no stack check (a NOSPLIT leaf)


def test_real_functions(build: Callable[..., Path], build_go: Callable[..., Path]) -> None:
    info = load_elf(build("calls"))
    work = read_function_code(info, info.symbols["work"][0])
    assert work.complete and work.instructions[0].mnemonic == "push"
    assert len(find_ret_sites(work, "work")) == 1
    go = load_elf(build_go("gocalls"))
    main = read_function_code(go, go.symbols["main.main"][0])
    assert main.complete and calls_back_to_start(main)
    entry = go_entry_offset(main)
    assert entry > 0 and main.instructions[[i.offset for i in main.instructions].index(entry) - 1].mnemonic == "jbe"
    handle = read_function_code(go, go.symbols["main.handle"][0])
    assert go_entry_offset(handle) == 0 and not calls_back_to_start(handle)  # a leaf: no stack check
    assert find_ret_sites(handle, "main.handle") == (handle.instructions[-1].offset,)
