"""pyelftools shell: function symbols and their file offsets; pyelftools' errors are converted here only.

A uprobe is placed at a file offset. For a symbol, offset = st_value − p_vaddr + p_offset of the
executable PT_LOAD segment that holds it, which covers PIE, non-PIE and shared libraries alike.
Symbols come from ``.symtab``, then ``.dynsym``, then a separate debug file found by build-id.

pyelftools reads lazily and, on a corrupt file, fails with whatever its parser hit (``ELFError``, its
construct library's errors, ``ValueError`` from a seek past any offset, ``struct.error``,
``IndexError``...): ``load_elf`` reads everything it needs at once and maps those (``CORRUPT_ELF_ERRORS``)
to one ``ResolveError`` naming the file.
"""

from __future__ import annotations

import difflib
import errno
import fnmatch
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.construct.core import ConstructError
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerSymSection
from elftools.elf.sections import NoteSection, SymbolTableSection

from uprobe_exporter.errors import ResolveError, mapped_oserror, os_errors
from uprobe_exporter.plan.instructions import MAX_INSTRUCTION, FunctionCode, Instruction, decode_function
from uprobe_exporter.plan.stapsdt import LoadSegment, UsdtNote, match_notes, parse_stapsdt_section, resolve_site

FUNCTION_TYPES = ("STT_FUNC",)
STT_GNU_IFUNC = "STT_GNU_IFUNC"
# What pyelftools raises on a corrupt file, found by feeding it truncated, overwritten and bit-flipped
# binaries (tests/unit/test_elf.py keeps doing so): its own errors, those of its construct library,
# ValueError ("cannot fit 'int' into an offset-sized integer": a seek to a corrupt offset),
# struct.error, IndexError/KeyError (tables indexed by corrupt numbers), OverflowError.
CORRUPT_ELF_ERRORS = (ELFError, ConstructError, ValueError, struct.error, IndexError, KeyError, OverflowError)
GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"
GO_BUILDINFO_READ = 512  # the header (32 bytes) and the inline version string are at its start


@dataclass(frozen=True, slots=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    executable: bool


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str  # without the version suffix: malloc@@GLIBC_2.2.5 → malloc
    value: int
    size: int
    type: str  # STT_FUNC, STT_GNU_IFUNC, STT_OBJECT...
    version: str = ""  # GLIBC_2.2.5, from .gnu.version/.gnu.version_d (or the name in .symtab)
    default: bool = True  # name@@VERSION (what a plain reference binds to) rather than name@VERSION


@dataclass(frozen=True, slots=True)
class ElfInfo:
    path: Path
    segments: tuple[Segment, ...]
    symbols: dict[str, list[Symbol]]
    go_version: str | None = None  # a Go program or library: "go1.19.8", or "" when its version is not inline

    @property
    def is_go(self) -> bool:
        """Built by the Go toolchain: its runtime walks its own stacks (return probes break that)."""
        return self.go_version is not None

    def file_offset(self, vaddr: int) -> int | None:
        """The file offset of ``vaddr`` if an executable PT_LOAD segment holds it."""
        for s in self.segments:
            if s.executable and s.vaddr <= vaddr < s.vaddr + s.filesz:
                return vaddr - s.vaddr + s.offset
        return None

    def offset_is_executable(self, offset: int) -> bool:
        return any(s.executable and s.offset <= offset < s.offset + s.filesz for s in self.segments)

    def go_register_abi(self) -> bool:
        """Go ≥ 1.17 on amd64: arguments in registers, the current g in %r14 (ABIInternal). The version
        is inline from Go 1.18; without it, Go 1.17's ABI wrappers (``*.abi0`` symbols) say so."""
        version = self.go_version or ""
        m = re.match(r"go1\.(\d+)", version)
        if m:
            return int(m[1]) >= 17
        return any(name.endswith(".abi0") for name in self.symbols)

    def function_around(self, offset: int) -> tuple[Symbol, int] | None:
        """The function whose code holds file ``offset``, and how far into it, if the symbols say."""
        for sym in self.functions():
            start = self.file_offset(sym.value)
            if start is not None and start <= offset < start + max(sym.size, 1):
                return sym, offset - start
        return None

    def functions(self) -> list[Symbol]:
        """Every probeable function, one per name, sorted by name."""
        out = []
        for syms in self.symbols.values():
            funcs = [s for s in syms if s.type in FUNCTION_TYPES and self.file_offset(s.value) is not None]
            if funcs:
                out.append(funcs[0])
        return sorted(out, key=lambda s: s.name)

    def resolve(self, symbol: str, plus: int = 0) -> int:
        """The file offset of ``symbol+plus``; errors name the symbol and suggest close names.
        ``name@VERSION``/``name@@VERSION`` picks that version; a plain name picks the default one."""
        name, _, version = symbol.partition("@")
        version = version.lstrip("@")
        where = f"'{symbol}' in {self.path}"
        candidates = self.symbols.get(name, [])
        if candidates and version:
            versions = sorted({s.version for s in candidates if s.version})
            candidates = [s for s in candidates if s.version == version]
            if not candidates:
                raise ResolveError(f"symbol {where} has no version {version}; it has {', '.join(versions)}",
                                   binary=str(self.path), symbol=symbol)
        elif len({s.value for s in candidates}) > 1 and any(s.default and s.version for s in candidates):
            candidates = [s for s in candidates if s.default]  # like a plain reference: name@@VERSION
        if not candidates:
            close = difflib.get_close_matches(name, [s.name for s in self.functions()], n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else (
                f"; list them with: uprobe-exporter symbols {self.path}")
            raise ResolveError(f"symbol {where} not found{hint}", binary=str(self.path), symbol=symbol)
        funcs = [s for s in candidates if s.type in FUNCTION_TYPES]
        if not funcs:
            kind = candidates[0].type.removeprefix("STT_").lower()
            hint = (" (an IFUNC resolver: probe one of its implementations instead, see "
                    f"'uprobe-exporter symbols {self.path} \"*{name}*\"')") if kind == "gnu_ifunc" else ""
            raise ResolveError(f"symbol {where} is not a function but {kind}{hint}",
                               binary=str(self.path), symbol=symbol)
        values = sorted({s.value for s in funcs})
        if len(values) > 1:
            listed = ", ".join(hex(v) for v in values)
            raise ResolveError(f"symbol {where} is ambiguous (functions at {listed}); use offset = instead",
                               binary=str(self.path), symbol=symbol)
        sym = next(s for s in funcs if s.value == values[0])
        if plus and sym.size and plus >= sym.size:
            raise ResolveError(f"{where}+{plus:#x} is past the end of the function ({sym.size} bytes)",
                               binary=str(self.path), symbol=symbol)
        offset = self.file_offset(sym.value + plus)
        if offset is None:
            raise ResolveError(f"symbol {where} is not in an executable segment", binary=str(self.path),
                               symbol=symbol)
        return offset


def read_function_code(info: ElfInfo, sym: Symbol) -> FunctionCode:
    """The decoded instructions of ``sym`` (its ``st_size`` bytes), read from its file."""
    offset = info.file_offset(sym.value)
    if offset is None:
        raise ResolveError(f"{sym.name} is not in an executable segment of {info.path}", binary=str(info.path),
                           symbol=sym.name)
    with os_errors(ResolveError, f"cannot read {info.path}", path=info.path), open(info.path, "rb") as f:
        f.seek(offset)
        data = f.read(sym.size)
    return decode_function(data, sym.value)


def read_instruction_at(path: Path, offset: int) -> Instruction | None:
    """The instruction that starts at file ``offset`` (None if the bytes there do not decode)."""
    with os_errors(ResolveError, f"cannot read {path}", path=path), open(path, "rb") as f:
        f.seek(offset)
        data = f.read(MAX_INSTRUCTION)
    code = decode_function(data, 0)
    return code.instructions[0] if code.instructions else None


def parse_go_buildinfo(data: bytes) -> str | None:
    """The Go version from the start of a ``.go.buildinfo`` section: ``go1.19.8``; ``""`` when the
    section is Go's but holds no inline version (Go < 1.18 points to it instead); None when it is not
    Go's. Layout (Go's debug/buildinfo): 14-byte magic, pointer size, flags (2 = inline strings), padding
    to 32, then a uvarint length and the version."""
    if not data.startswith(GO_BUILDINFO_MAGIC) or len(data) < 32:
        return None
    if not data[15] & 2:
        return ""
    length, shift, pos = 0, 0, 32
    while pos < len(data) and shift < 64:
        byte = data[pos]
        length |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            version = data[pos:pos + length]
            return version.decode("ascii", "replace") if len(version) == length and length < 64 else ""
    return ""


def _go_version(elf: Any, stream: BinaryIO, symbols: dict[str, list[Symbol]]) -> str | None:
    """A Go binary has a ``.go.buildinfo`` section (Go ≥ 1.13) or, stripped of sections' names, the
    ``runtime.buildVersion`` symbol; None when neither is there."""
    section = elf.get_section_by_name(".go.buildinfo")
    if section is not None and section["sh_type"] != "SHT_NOBITS":
        stream.seek(section["sh_offset"])
        version = parse_go_buildinfo(stream.read(min(section["sh_size"], GO_BUILDINFO_READ)))
        if version is not None:
            return version
    return "" if "runtime.buildVersion" in symbols else None


def _dynsym_versions(elf: Any) -> tuple[Any, dict[int, str]]:
    """``.gnu.version`` (one index per .dynsym entry) and ``.gnu.version_d`` (index → version name)."""
    versym = elf.get_section_by_name(".gnu.version")
    verdef = elf.get_section_by_name(".gnu.version_d")
    if not isinstance(versym, GNUVerSymSection):  # a corrupt section type: no versions then
        versym = None
    names: dict[int, str] = {}
    if isinstance(verdef, GNUVerDefSection):
        for definition, aux in verdef.iter_versions():
            first = next(iter(aux), None)
            if first is not None:
                names[definition["vd_ndx"]] = first.name
    return versym, names


def _symbols_of(elf: Any, into: dict[str, list[Symbol]], sections: tuple[str, ...]) -> None:
    for section_name in sections:
        section = elf.get_section_by_name(section_name)
        if not isinstance(section, SymbolTableSection):
            continue
        versym, version_names = _dynsym_versions(elf) if section_name == ".dynsym" else (None, {})
        for i, sym in enumerate(section.iter_symbols()):
            if not sym.name or sym["st_shndx"] == "SHN_UNDEF":
                continue
            name, at, version = sym.name.partition("@")  # .symtab may spell it: memcpy@GLIBC_2.2.5
            default = not at or version.startswith("@")
            version = version.lstrip("@")
            if versym is not None:
                ndx = versym.get_symbol(i)["ndx"]
                if isinstance(ndx, int):
                    version, default = version_names.get(ndx & 0x7FFF, ""), not ndx & 0x8000  # VERSYM_HIDDEN
            kind = sym["st_info"]["type"]
            kind = STT_GNU_IFUNC if kind == "STT_LOOS" else kind  # pyelftools names type 10 by its range
            into.setdefault(name, []).append(Symbol(name, sym["st_value"], sym["st_size"], kind, version, default))


def _build_id(elf: Any) -> str | None:
    section = elf.get_section_by_name(".note.gnu.build-id")
    if not isinstance(section, NoteSection):
        return None
    for note in section.iter_notes():
        if note["n_type"] == "NT_GNU_BUILD_ID":
            return str(note["n_desc"])
    return None


def load_elf(path: Path, debug_root: str = "/") -> ElfInfo:
    """Read segments and symbols of an ELF file (and of its build-id debug file when stripped), and
    whether Go built it. A file that is not ELF, or is corrupt, raises one ResolveError naming it."""
    with os_errors(ResolveError, f"cannot read {path}", path=path), open(path, "rb") as f:
        info, build_id = _parse_elf(path, f)
    if build_id:
        _load_debug_symbols(path, build_id, debug_root, info.symbols)
    return info


def _parse_elf(path: Path, f: BinaryIO) -> tuple[ElfInfo, str | None]:
    """The one place pyelftools' exceptions on a corrupt file become a ResolveError."""
    try:
        elf = ELFFile(f)
        segments = tuple(
            Segment(seg["p_vaddr"], seg["p_offset"], seg["p_filesz"], bool(seg["p_flags"] & P_FLAGS.PF_X))
            for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD")
        symbols: dict[str, list[Symbol]] = {}
        _symbols_of(elf, symbols, (".symtab", ".dynsym"))
        has_symtab = elf.get_section_by_name(".symtab") is not None
        build_id = None if has_symtab else _build_id(elf)
        go_version = _go_version(elf, f, symbols)
    except CORRUPT_ELF_ERRORS as exc:
        raise ResolveError(f"{path} is not a valid ELF file ({_describe(exc)}); give an executable or "
                           "shared library", binary=str(path)) from exc
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise  # an I/O error: load_elf maps it
        # a seek to a negative offset (EINVAL): a corrupt header, not an I/O problem
        raise ResolveError(f"{path} is not a valid ELF file (an offset points outside the file); give an "
                           "executable or shared library", binary=str(path)) from exc
    if not segments:
        raise ResolveError(f"{path} has no loadable segments (not an executable or library)", binary=str(path))
    return ElfInfo(path, segments, symbols, go_version), build_id


def _describe(exc: Exception) -> str:
    """pyelftools' message if it has one worth showing, else what kind of failure it was."""
    if isinstance(exc, ELFError) and not isinstance(exc, ELFParseError) and str(exc):
        return str(exc).rstrip(".")  # "Magic number does not match", "Invalid EI_CLASS ..."
    return "truncated, or corrupt headers or tables"


def _load_debug_symbols(path: Path, build_id: str, root: str, symbols: dict[str, list[Symbol]]) -> None:
    """Add the symbols of the build-id debug file of ``path``, if there is one."""
    debug = os.path.join(root, "usr/lib/debug/.build-id", build_id[:2], build_id[2:] + ".debug")
    if not os.path.isfile(debug):
        return
    extra: dict[str, list[Symbol]] = {}
    try:
        with open(debug, "rb") as f:
            _symbols_of(ELFFile(f), extra, (".symtab",))
    except CORRUPT_ELF_ERRORS as exc:
        raise ResolveError(f"the debug file of {path}, {debug}, is corrupt; reinstall or remove it",
                           binary=str(path)) from exc
    except OSError as exc:
        raise mapped_oserror(exc, ResolveError, f"cannot read the debug file of {path}, {debug}", path=path,
                             fix="reinstall or remove it") from exc
    for name, syms in extra.items():
        symbols.setdefault(name, syms)


def match_functions(info: ElfInfo, pattern: str | None) -> list[tuple[Symbol, int]]:
    """Functions whose name matches a glob (or contains ``pattern``), with their file offsets."""
    out = []
    for sym in info.functions():
        if pattern and not (fnmatch.fnmatchcase(sym.name, pattern) or pattern in sym.name):
            continue
        offset = info.file_offset(sym.value)
        if offset is not None:
            out.append((sym, offset))
    return out


@dataclass(frozen=True, slots=True)
class StapsdtInfo:
    """What USDT resolution needs of a file: its notes, ``.stapsdt.base``'s address, its PT_LOAD segments."""

    path: Path
    notes: tuple[UsdtNote, ...]
    stapsdt_base: int | None
    segments: tuple[LoadSegment, ...]


def read_stapsdt(path: Path) -> StapsdtInfo:
    """Read the ``.note.stapsdt`` notes of an ELF file (none: an empty tuple)."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            segments = tuple(
                LoadSegment(seg["p_vaddr"], seg["p_offset"], seg["p_filesz"], seg["p_memsz"],
                            bool(seg["p_flags"] & P_FLAGS.PF_X), bool(seg["p_flags"] & P_FLAGS.PF_W))
                for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD")
            section = elf.get_section_by_name(".note.stapsdt")
            address_size = 8 if elf.elfclass == 64 else 4
            notes = tuple(parse_stapsdt_section(section.data(), address_size)) if section is not None else ()
            base = elf.get_section_by_name(".stapsdt.base")
            stapsdt_base = int(base["sh_addr"]) if base is not None else None
    except ELFError as exc:
        raise ResolveError(f"{path} is not a valid ELF file: {exc}", binary=str(path)) from exc
    except OSError as exc:
        raise mapped_oserror(exc, ResolveError, f"cannot read {path}", path=path) from exc
    return StapsdtInfo(path, notes, stapsdt_base, segments)


def render_usdt_listing(info: StapsdtInfo, pattern: str | None) -> list[str]:
    """``provider:name``, its sites (file offsets), semaphore file offset and argument specs, one probe a
    line: ``python:function__entry sites=0xc779b semaphore=0x67dd40 args=arg0=8@%rbp arg1=8@%r12 ...``.
    A site whose addresses do not resolve is listed with the reason."""
    by_name: dict[str, list[UsdtNote]] = {}
    for note in match_notes(info.notes, pattern):
        by_name.setdefault(note.full_name, []).append(note)
    lines = []
    for name, notes in sorted(by_name.items()):
        offsets, semaphores = [], set()
        try:
            for note in notes:
                site = resolve_site(note, info.stapsdt_base, info.segments, str(info.path))
                offsets.append(f"{site.offset:#x}")
                semaphores.add("-" if site.ref_ctr_offset is None else f"{site.ref_ctr_offset:#x}")
        except ResolveError as exc:
            lines.append(f"{name} ({exc})")
            continue
        specs = sorted({" ".join(f"arg{i}={a}" for i, a in enumerate(n.args)) for n in notes})
        lines.append(f"{name} sites={','.join(offsets)} semaphore={','.join(sorted(semaphores))} "
                     f"args={' | '.join(specs) or '-'}")
    return lines


def close_functions(info: ElfInfo, pattern: str, n: int = 5) -> list[str]:
    """Function names close to ``pattern`` (its glob characters dropped), closest first, for a search
    that matched nothing: case-insensitive matches first, then difflib's closest spellings."""
    word = pattern.strip("*?[]")
    names = sorted({s.name for s in info.functions()})
    folded = [name for name in names if word and word.lower() in name.lower()]
    close = difflib.get_close_matches(word, names, n=n, cutoff=0.6) if word else []
    return list(dict.fromkeys([*folded[:n], *close]))[:n]
