"""USDT notes and argument specs (stapsdt.py), on real notes: Debian's python3.11 and the C target."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from uprobe_exporter.errors import ResolveError
from uprobe_exporter.plan.config import parse_config_partial
from uprobe_exporter.plan.elf import read_stapsdt, render_usdt_listing
from uprobe_exporter.plan.stapsdt import (
    REGISTERS,
    LoadSegment,
    UsdtNote,
    UsdtSite,
    check_usdt_arg,
    find_notes,
    parse_arg_spec,
    parse_stapsdt_desc,
    parse_stapsdt_section,
    render_fetcharg,
    resolve_site,
    site_fetchargs,
)

PYTHON = Path("/usr/bin/python3.11")
needs_python = pytest.mark.skipif(not PYTHON.exists(), reason="Debian's python3.11 (installed by .ci/run)")


@pytest.mark.parametrize(("spec", "default", "fetcharg"), [
    ("8@%rax", "u64", "%ax:u64"),
    ("-4@%eax", "s32", "%ax:s32"),
    ("-2@%di", "s16", "%di:s16"),
    ("1@%cl", "u8", "%cx:u8"),
    ("-1@%sil", "s8", "%si:s8"),
    ("1@%r9b", "u8", "%r9:u8"),
    ("4@%r10d", "u32", "%r10:u32"),
    ("2@%r15w", "u16", "%r15:u16"),
    ("8@%r12", "u64", "%r12:u64"),
    ("8@-20(%rbp)", "u64", "-20(%bp):u64"),
    ("4@16(%rsp)", "u32", "+16(%sp):u32"),
    ("-4@112(%rsp)", "s32", "+112(%sp):s32"),
    ("8@(%rax)", "u64", "+0(%ax):u64"),
    ("8@0x10(%r13)", "u64", "+16(%r13):u64"),
    ("4@$5", "u32", "\\5:u32"),
    ("-4@$-7", "s32", "\\-7:s32"),
    ("1@%ah", "u8", "%ax:b8@8/64"),
    ("%rdi", "u64", "%di:u64"),  # no size: the register's width
])
def test_arg_spec_to_fetcharg(spec: str, default: str, fetcharg: str) -> None:
    arg = parse_arg_spec(spec)
    assert arg.default_type == default
    assert render_fetcharg(arg, default) == fetcharg


def test_every_sub_register_name_is_known() -> None:
    for full, d, w, b in (("rax", "eax", "ax", "al"), ("rbx", "ebx", "bx", "bl"), ("rcx", "ecx", "cx", "cl"),
                          ("rdx", "edx", "dx", "dl"), ("rsi", "esi", "si", "sil"), ("rdi", "edi", "di", "dil"),
                          ("rbp", "ebp", "bp", "bpl"), ("rsp", "esp", "sp", "spl")):
        assert {REGISTERS[n][0] for n in (full, d, w, b)} == {w}
        assert [REGISTERS[n][1] for n in (full, d, w, b)] == [8, 4, 2, 1]
    for i in range(8, 16):
        assert [REGISTERS[f"r{i}{s}"] for s in ("", "d", "w", "b")] == [(f"r{i}", n) for n in (8, 4, 2, 1)]
    for high in ("ah", "bh", "ch", "dh"):
        assert parse_arg_spec(f"1@%{high}").bit_offset == 8


def test_type_suffix_overrides_and_strings_read_through_the_pointer() -> None:
    assert render_fetcharg(parse_arg_spec("8@%rbp"), "string") == "+0(%bp):string"
    assert render_fetcharg(parse_arg_spec("8@-80(%rbp)"), "string") == "+0(-80(%bp)):string"
    assert render_fetcharg(parse_arg_spec("8@%rax"), "x64") == "%ax:x64"
    assert render_fetcharg(parse_arg_spec("-4@%eax"), "u16") == "%ax:u16"
    with pytest.raises(ResolveError, match=r"'4@\$5' is a constant"):
        render_fetcharg(parse_arg_spec("4@$5"), "string")


@pytest.mark.parametrize("spec", ["8@(%rax,%rbx,8)", "8@foo(%rip)", "8@0x601040", "4@%xmm0", "4@-4(%eax)",
                                  "16@%rax", "garbage spec"])
def test_a_spec_the_kernel_cannot_fetch_is_named(spec: str) -> None:
    with pytest.raises(ResolveError) as exc:
        parse_arg_spec(spec)
    assert spec.split(maxsplit=1)[0] in str(exc.value) or "SIZE@OPERAND" in str(exc.value)


def test_usdt_arg_values() -> None:
    assert check_usdt_arg("arg0") is None
    assert check_usdt_arg("arg11:string") is None
    assert "argN" in (check_usdt_arg("argument0") or "")
    assert "unknown type" in (check_usdt_arg("arg1:strin") or "")


def _desc(pc: int, base: int, sem: int, provider: str, name: str, args: str) -> bytes:
    return struct.pack("<3Q", pc, base, sem) + f"{provider}\0{name}\0{args}\0".encode()


def _note(desc: bytes, owner: bytes = b"stapsdt", kind: int = 3) -> bytes:
    name = owner + b"\0"
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    return struct.pack("<3I", len(name), len(desc), kind) + pad(name) + pad(desc)


SEGMENTS = (LoadSegment(0, 0, 0x1000, 0x1000, False, False), LoadSegment(0x1000, 0x1000, 0x2000, 0x2000, True, False),
            LoadSegment(0x4000, 0x3000, 0x100, 0x200, False, True))


def test_section_parsing_skips_other_notes_and_prelink_adjusts() -> None:
    data = (_note(_desc(0x1100, 0x2000, 0x4010, "p", "a", "8@%rdi -4@%esi")) + _note(b"xyz", b"GNU", 1)
            + _note(_desc(0x1200, 0x2000, 0, "p", "b", "")))
    notes = parse_stapsdt_section(data)
    assert [(n.provider, n.name, n.args) for n in notes] == [("p", "a", ("8@%rdi", "-4@%esi")), ("p", "b", ())]
    assert resolve_site(notes[0], 0x2000, SEGMENTS, "f") == UsdtSite(notes[0], 0x1100, 0x3010)
    # the file was prelinked 0x40 higher: .stapsdt.base says where, and pc and semaphore follow
    assert resolve_site(notes[0], 0x2040, SEGMENTS, "f") == UsdtSite(notes[0], 0x1140, 0x3050)
    assert resolve_site(notes[1], None, SEGMENTS, "f").ref_ctr_offset is None


def test_semaphore_in_a_read_only_segment_and_pc_outside_code() -> None:
    ro = UsdtNote("p", "ro", 0x1100, 0, 0x10, ())
    with pytest.raises(ResolveError, match="semaphore at 0x10 is not in a writable segment"):
        resolve_site(ro, None, SEGMENTS, "f")
    with pytest.raises(ResolveError, match="not in an executable segment"):
        resolve_site(UsdtNote("p", "x", 0x4000, 0, 0, ()), None, SEGMENTS, "f")
    with pytest.raises(ResolveError, match="too short"):
        parse_stapsdt_desc(b"\0" * 10)


def test_sites_get_one_type_and_bad_argn_is_named() -> None:
    a = UsdtSite(UsdtNote("p", "m", 0x1100, 0, 0, ("-4@-4(%rbp)", "4@%eax")), 0x1100, None)
    b = UsdtSite(UsdtNote("p", "m", 0x1200, 0, 0, ("-4@%edx", "-4@%ecx")), 0x1200, None)
    assert site_fetchargs([a, b], [("x", "arg0"), ("y", "arg1"), ("c", "$comm")]) == [
        "x=-4(%bp):s32 y=%ax:s32 c=$comm", "x=%dx:s32 y=%cx:s32 c=$comm"]
    c = UsdtSite(UsdtNote("p", "m", 0x1300, 0, 0, ("-8@%rdx",)), 0x1300, None)
    with pytest.raises(ResolveError, match=r"4 bytes or 8 bytes at different sites .*'arg0:s32'"):
        site_fetchargs([a, c], [("x", "arg0")])
    assert site_fetchargs([a, c], [("x", "arg0:s64")]) == ["x=-4(%bp):s64", "x=%dx:s64"]
    with pytest.raises(ResolveError, match=r"'arg2': USDT p:m has 2 arguments \(arg0..arg1: -4@-4\(%rbp\) 4@%eax\)"):
        site_fetchargs([a], [("x", "arg2")])


@needs_python
def test_python311_notes() -> None:
    info = read_stapsdt(PYTHON)
    names = {n.full_name for n in info.notes}
    assert {"python:function__entry", "python:function__return", "python:gc__start", "python:gc__done",
            "python:line"} <= names
    entry = find_notes(info.notes, "python:function__entry", str(PYTHON))
    assert [n.args for n in entry] == [("8@%rbp", "8@%r12", "-4@%eax")]
    site = resolve_site(entry[0], info.stapsdt_base, info.segments, str(PYTHON))
    # the kernel's file offsets: the code through the R E segment, the semaphore (.probes) through RW
    assert site.offset == entry[0].pc - 0x400000 and site.ref_ctr_offset is not None
    probes = next(s for s in info.segments if s.writable)
    assert site.ref_ctr_offset == entry[0].semaphore - probes.vaddr + probes.offset
    assert site_fetchargs([site], [("file", "arg0:string"), ("func", "arg1:string"), ("line", "arg2")]) == [
        "file=+0(%bp):string func=+0(%r12):string line=%ax:s32"]
    with pytest.raises(ResolveError, match="did you mean 'python:function__entry'"):
        find_notes(info.notes, "python:function_entry", str(PYTHON))
    lines = render_usdt_listing(info, "python:gc*")
    assert [line.split()[0] for line in lines] == ["python:gc__done", "python:gc__start"]
    assert "args=arg0=-4@112(%rsp)" in lines[1] and "semaphore=0x" in lines[1]


def test_c_target_notes(build: Callable[..., Path]) -> None:
    info = read_stapsdt(build("usdt"))
    by_name: dict[str, list[UsdtNote]] = {}
    for n in info.notes:
        by_name.setdefault(n.full_name, []).append(n)
    assert len(by_name["t:multi"]) == 2 and not by_name["t:multi"][0].semaphore
    assert by_name["t:sem"][0].semaphore
    forms = {spec.split("@")[1][0] for n in by_name["t:args"] + by_name["t:regs"] for spec in n.args}
    assert forms == {"%", "-", "$"}  # registers, memory operands, a constant
    with pytest.raises(ResolveError, match="not in a writable segment"):
        resolve_site(by_name["t:ro"][0], info.stapsdt_base, info.segments, "usdt")


def test_config_keys() -> None:
    base = {"name": "p", "binary": "/usr/bin/python3.11", "usdt": "python:function__entry"}
    _, problems = parse_config_partial({"probes": [
        {**base, "return": True},
        {**base, "name": "q", "function": "main"},
        {"name": "r", "binary": "x", "function": "main", "return_usdt": "a:b"},
        {**base, "name": "s", "usdt": "function__entry"},
        {**base, "name": "t", "latency": True},
        {**base, "name": "u", "args": {"a": "arg0:strin", "b": "%di", "c": "argh"}},
    ]})
    text = "\n".join(problems)
    assert "probes[0] \"p\".return: a USDT is not a function" in text
    assert "probes[1] \"q\": give one of 'function', 'offset' or 'usdt', not several" in text
    assert "probes[2] \"r\".return_usdt: needs usdt" in text
    assert "probes[3] \"s\".usdt: 'function__entry' must be provider:name" in text
    assert "probes[4] \"t\".latency: needs return_usdt" in text
    assert "probes[5] \"u\".args.a: unknown type in 'arg0:strin'" in text
    assert "probes[5] \"u\".args.c: 'argh' must be argN" in text
    assert "probes[5] \"u\".args.b" not in text  # any fetcharg is allowed beside argN
    config, problems = parse_config_partial({"probes": [{**base, "return_usdt": "python:function__return",
                                                         "latency": True, "labels": ["f"],
                                                         "args": {"f": "arg1:string"}}]})
    assert not problems and config.probes[0].return_probe and config.probes[0].where == "python:function__entry"
