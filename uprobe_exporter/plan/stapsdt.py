"""Pure: SystemTap ``.note.stapsdt`` probes (USDT) → file offsets, semaphores and kernel fetchargs.

A note's descriptor (sys/sdt.h: ``_SDT_NOTE``) is three addresses — the probe's pc, the link-time
address of ``.stapsdt.base``, the semaphore (0: none) — then ``provider\\0name\\0args\\0``:

    provider python, name function__entry, pc 0x4c779b, base 0x8c99c0, semaphore 0xa7ed40,
    args "8@%rbp 8@%r12 -4@%eax"

Each argument spec is ``[-]SIZE@OPERAND`` in AT&T syntax (``8@%rax``, ``-4@%eax``, ``8@-20(%rbp)``,
``4@$5``); the sign and size become the default fetch type (``-4@`` → ``s32``). The addresses are
link-time virtual addresses; if the file was prelinked, ``.stapsdt.base``'s actual address minus the
note's base is added to both (as bpftrace and BCC do). The kernel wants file offsets: the pc through
the executable PT_LOAD segment holding it, the semaphore (a 2-byte counter the kernel increments for
every tracer, ``uprobe_register_refctr``) through the writable one.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from uprobe_exporter.errors import ResolveError
from uprobe_exporter.plan.fetchargs import TYPE_RE

NT_STAPSDT = 3
STAPSDT_OWNER = "stapsdt"

# x86-64 register names in USDT specs → the name regs_query_register_offset() knows, and the width the
# name selects; (register, bit offset) for the high bytes.
_GPR = {"ax": ("rax", "eax", "ax", "al"), "bx": ("rbx", "ebx", "bx", "bl"), "cx": ("rcx", "ecx", "cx", "cl"),
        "dx": ("rdx", "edx", "dx", "dl"), "si": ("rsi", "esi", "si", "sil"), "di": ("rdi", "edi", "di", "dil"),
        "bp": ("rbp", "ebp", "bp", "bpl"), "sp": ("rsp", "esp", "sp", "spl")}
REGISTERS: dict[str, tuple[str, int]] = {}
for _k, _names in _GPR.items():
    for _name, _size in zip(_names, (8, 4, 2, 1), strict=True):
        REGISTERS[_name] = (_k, _size)
for _i in range(8, 16):
    for _suffix, _size in (("", 8), ("d", 4), ("w", 2), ("b", 1), ("l", 1)):
        REGISTERS[f"r{_i}{_suffix}"] = (f"r{_i}", _size)
REGISTERS["rip"] = ("ip", 8)
HIGH_BYTES = {"ah": "ax", "bh": "bx", "ch": "cx", "dh": "dx"}

SPEC_RE = re.compile(r"(?:(?P<sign>-?)(?P<size>[1248])@)?(?P<operand>\S+)\Z")
MEMORY_RE = re.compile(r"(?P<off>[-+]?(?:0x[0-9a-fA-F]+|\d+))?\(%(?P<reg>[a-z0-9]+)\)\Z")
CONST_RE = re.compile(r"\$(?P<value>-?(?:0x[0-9a-fA-F]+|\d+))\Z")
USDT_ARG_RE = re.compile(r"arg(?P<n>\d+)(?::(?P<type>.+))?\Z")


@dataclass(frozen=True, slots=True)
class UsdtNote:
    """One ``.note.stapsdt`` entry, addresses as written at link time."""

    provider: str
    name: str
    pc: int
    base: int
    semaphore: int  # 0: no semaphore
    args: tuple[str, ...]  # the argument specs: ("8@%rbp", "-4@%eax")

    @property
    def full_name(self) -> str:
        return f"{self.provider}:{self.name}"


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """A PT_LOAD program header."""

    vaddr: int
    offset: int
    filesz: int
    memsz: int
    executable: bool
    writable: bool


@dataclass(frozen=True, slots=True)
class UsdtSite:
    """One site of a USDT probe, ready for ``uprobe_events``: ``PATH:OFFSET(REF_CTR_OFFSET)``."""

    note: UsdtNote
    offset: int  # file offset of the probed instruction (a nop)
    ref_ctr_offset: int | None  # file offset of the semaphore


@dataclass(frozen=True, slots=True)
class UsdtArg:
    """One argument spec: a register, a memory operand ``OFF(%reg)`` or a constant."""

    spec: str
    size: int
    signed: bool
    register: str = ""  # the kernel's name (ax, r12), for registers and memory operands
    bit_offset: int = 0  # 8 for %ah..%dh
    memory: bool = False
    displacement: int = 0
    constant: int | None = None

    @property
    def default_type(self) -> str:
        return f"{'s' if self.signed else 'u'}{self.size * 8}"


def parse_stapsdt_desc(desc: bytes, address_size: int = 8) -> UsdtNote:
    """A note's descriptor (bytes after the name ``stapsdt``) → ``UsdtNote``."""
    fmt = "<3Q" if address_size == 8 else "<3I"
    head = struct.calcsize(fmt)
    if len(desc) < head + 3:
        raise ResolveError(f"a .note.stapsdt descriptor of {len(desc)} bytes is too short")
    pc, base, semaphore = struct.unpack_from(fmt, desc)
    parts = desc[head:].split(b"\0")
    if len(parts) < 3:
        raise ResolveError("a .note.stapsdt descriptor lacks its provider, name or arguments")
    provider, name, args = (p.decode("utf-8", "replace") for p in parts[:3])
    return UsdtNote(provider, name, pc, base, semaphore, tuple(args.split()))


def parse_stapsdt_section(data: bytes, address_size: int = 8) -> list[UsdtNote]:
    """The notes of a ``.note.stapsdt`` section (Elf_Nhdr: namesz, descsz, type; name and descriptor
    each padded to 4 bytes); notes of other owners or types are skipped."""
    notes, at = [], 0
    while at + 12 <= len(data):
        namesz, descsz, kind = struct.unpack_from("<3I", data, at)
        name_at = at + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        end = desc_at + (descsz + 3) // 4 * 4
        if desc_at + descsz > len(data):
            raise ResolveError(f"a .note.stapsdt entry at {at:#x} runs past the section")
        if kind == NT_STAPSDT and data[name_at:name_at + namesz].rstrip(b"\0") == STAPSDT_OWNER.encode():
            notes.append(parse_stapsdt_desc(data[desc_at:desc_at + descsz], address_size))
        at = end
    return notes


def _file_offset(vaddr: int, segments: Iterable[LoadSegment], *, executable: bool) -> LoadSegment | None:
    for s in segments:
        if s.vaddr <= vaddr < s.vaddr + (s.filesz if executable else s.memsz):
            return s
    return None


def resolve_site(note: UsdtNote, stapsdt_base: int | None, segments: Sequence[LoadSegment], path: str) -> UsdtSite:
    """The note's file offsets. ``stapsdt_base`` is the actual address of ``.stapsdt.base`` (None when
    the file has no such section: no adjustment)."""
    adjust = stapsdt_base - note.base if stapsdt_base is not None and note.base else 0
    pc = note.pc + adjust
    seg = _file_offset(pc, segments, executable=True)
    if seg is None or not seg.executable:
        raise ResolveError(f"USDT {note.full_name} at {pc:#x} is not in an executable segment of {path}",
                           binary=path, symbol=note.full_name)
    offset = pc - seg.vaddr + seg.offset
    ref: int | None = None
    if note.semaphore:
        sem = note.semaphore + adjust
        sseg = _file_offset(sem, segments, executable=False)
        if sseg is None or not sseg.writable:
            raise ResolveError(
                f"USDT {note.full_name}: its semaphore at {sem:#x} is not in a writable segment of {path}; the "
                "kernel could not count tracers in it (a broken note: rebuild the program with <sys/sdt.h>)",
                binary=path, symbol=note.full_name)
        ref = sem - sseg.vaddr + sseg.offset
    return UsdtSite(note, offset, ref)


def find_notes(notes: Sequence[UsdtNote], full_name: str, path: str) -> list[UsdtNote]:
    """Every site of ``provider:name``; an unknown one lists the closest names."""
    provider, sep, name = full_name.partition(":")
    found = [n for n in notes if sep and n.provider == provider and n.name == name]
    if found:
        return found
    names = sorted({n.full_name for n in notes})
    if not names:
        raise ResolveError(f"{path} has no USDT probes (no .note.stapsdt section)", binary=path,
                           symbol=full_name)
    close = difflib.get_close_matches(full_name, names, n=3, cutoff=0.5)
    hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close
            else f"list them with: uprobe-exporter usdt {path}")
    raise ResolveError(f"USDT '{full_name}' not found in {path}; {hint}", binary=path, symbol=full_name)


def match_notes(notes: Sequence[UsdtNote], pattern: str | None) -> list[UsdtNote]:
    """Notes whose ``provider:name`` matches a glob (or contains ``pattern``)."""
    return [n for n in notes if not pattern or fnmatch.fnmatchcase(n.full_name, pattern) or pattern in n.full_name]


def _register(name: str, spec: str) -> tuple[str, int, int]:
    """(kernel name, width in bytes, bit offset) of an AT&T register name without the ``%``."""
    if name in REGISTERS:
        reg, size = REGISTERS[name]
        return reg, size, 0
    if name in HIGH_BYTES:
        return HIGH_BYTES[name], 1, 8
    raise ResolveError(f"USDT argument '{spec}': register %{name} cannot be fetched by a uprobe")


def parse_arg_spec(spec: str) -> UsdtArg:
    """``-4@%eax``, ``8@-20(%rbp)``, ``4@$5`` → ``UsdtArg``; a form the kernel cannot fetch (an index
    register, a symbol) raises ``ResolveError`` naming the spec."""
    m = SPEC_RE.match(spec)
    if m is None:
        raise ResolveError(f"USDT argument '{spec}' is not SIZE@OPERAND")
    operand = m["operand"]
    size = int(m["size"]) if m["size"] else 0
    signed = m["sign"] == "-"
    if operand.startswith("%"):
        reg, width, bit = _register(operand[1:], spec)
        return UsdtArg(spec, size or width, signed, reg, bit)
    if (c := CONST_RE.match(operand)) is not None:
        return UsdtArg(spec, size or 8, signed, constant=int(c["value"], 0))
    if (mm := MEMORY_RE.match(operand)) is not None:
        reg, width, bit = _register(mm["reg"], spec)
        if width != 8 or bit:
            raise ResolveError(f"USDT argument '{spec}': an address register must be a 64-bit one")
        return UsdtArg(spec, size or 8, signed, reg, memory=True, displacement=int(mm["off"] or "0", 0))
    raise ResolveError(f"USDT argument '{spec}': the operand '{operand}' (an index register, a symbol or an "
                       "absolute address) cannot be fetched by a uprobe; only %REG, OFFSET(%REG) and $CONSTANT")


def _location(arg: UsdtArg) -> str:
    """The fetcharg without a type: ``%ax``, ``-20(%bp)``, ``\\5``."""
    if arg.constant is not None:
        return f"\\{arg.constant}"
    if arg.memory:
        return f"{arg.displacement:+d}(%{arg.register})"
    return f"%{arg.register}"


def render_fetcharg(arg: UsdtArg, kind: str) -> str:
    """The kernel fetcharg reading ``arg`` as type ``kind``; a string reads through the value (a pointer)."""
    base = kind.split("[", 1)[0]
    if base in ("string", "ustring"):
        if arg.constant is not None:
            raise ResolveError(f"USDT argument '{arg.spec}' is a constant: it cannot be read as a {base}")
        return f"+0({_location(arg)}):{kind}"
    if arg.bit_offset:
        # %ah..%dh: bits 8..15 of the register (the kernel's bitfield type b<width>@<offset>/<container>)
        return f"%{arg.register}:b8@{arg.bit_offset}/64"
    if "[" in kind and not arg.memory:
        raise ResolveError(f"USDT argument '{arg.spec}': an array must be read from memory")
    return f"{_location(arg)}:{kind}"


def check_usdt_arg(value: str) -> str | None:
    """A problem with an ``argN[:type]`` value of a USDT probe's ``args``, or None."""
    m = USDT_ARG_RE.match(value)
    if m is None:
        return f"'{value}' must be argN or argN:TYPE (N counts from 0, as bpftrace does)"
    if m["type"] is not None and not TYPE_RE.match(m["type"]):
        return (f"unknown type in '{value}'; use u8..u64, s8..s64, x8..x64, char, string or b<W>@<O>/<C>")
    if m["type"] in ("symbol", "symstr"):
        return f"'{value}': {m['type']} resolves kernel symbols only; use x64 for a user address"
    return None


def _common_type(args: Sequence[UsdtArg], value: str) -> str:
    """One type for an argument at every site (the kernel refuses sites of one event whose types
    differ, DIFF_ARG_TYPE): signed if any site says so. Sizes that differ need a type from the user:
    reading a 4-byte operand as 8 bytes would fetch whatever lies beside it."""
    sizes = sorted({a.size for a in args})
    if len(sizes) > 1:
        raise ResolveError(f"'{value}' is {' or '.join(f'{s} bytes' for s in sizes)} at different sites "
                           f"({', '.join(a.spec for a in args)}); give the type, e.g. '{value}:s{sizes[0] * 8}'")
    signed = any(a.signed for a in args)
    return f"{'s' if signed else 'u'}{sizes[0] * 8}"


def site_fetchargs(sites: Sequence[UsdtSite], args: Sequence[tuple[str, str]]) -> list[str]:
    """Per site, the ``name=fetcharg`` text of the configured ``args`` (``argN[:type]`` values become the
    note's specs; any other value is a fetcharg already and is kept). Types agree across sites."""
    per_site: list[list[str]] = [[] for _ in sites]
    for name, value in args:
        m = USDT_ARG_RE.match(value)
        if m is None:
            for out in per_site:
                out.append(f"{name}={value}")
            continue
        n = int(m["n"])
        specs = []
        for site in sites:
            if n >= len(site.note.args):
                have = len(site.note.args)
                raise ResolveError(
                    f"'{value}': USDT {site.note.full_name} has {have} argument{'s' if have != 1 else ''}"
                    + (f" (arg0..arg{have - 1}: {' '.join(site.note.args)})" if have else "")
                    + (f" at {site.offset:#x}" if len(sites) > 1 else ""), symbol=site.note.full_name)
            specs.append(parse_arg_spec(site.note.args[n]))
        kind = m["type"] or _common_type(specs, value)
        for out, spec in zip(per_site, specs, strict=True):
            out.append(f"{name}={render_fetcharg(spec, kind)}")
    return [" ".join(out) for out in per_site]
