"""pyelftools shell: function symbols and their file offsets; ``ELFError`` is converted here only.

A uprobe is placed at a file offset. For a symbol, offset = st_value − p_vaddr + p_offset of the
executable PT_LOAD segment that holds it, which covers PIE, non-PIE and shared libraries alike.
Symbols come from ``.symtab``, then ``.dynsym``, then a separate debug file found by build-id.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

from uprobe_exporter.errors import ResolveError

FUNCTION_TYPES = ("STT_FUNC",)
STT_GNU_IFUNC = "STT_GNU_IFUNC"


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

    def file_offset(self, vaddr: int) -> int | None:
        """The file offset of ``vaddr`` if an executable PT_LOAD segment holds it."""
        for s in self.segments:
            if s.executable and s.vaddr <= vaddr < s.vaddr + s.filesz:
                return vaddr - s.vaddr + s.offset
        return None

    def offset_is_executable(self, offset: int) -> bool:
        return any(s.executable and s.offset <= offset < s.offset + s.filesz for s in self.segments)

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


def _dynsym_versions(elf: Any) -> tuple[Any, dict[int, str]]:
    """``.gnu.version`` (one index per .dynsym entry) and ``.gnu.version_d`` (index → version name)."""
    versym = elf.get_section_by_name(".gnu.version")
    verdef = elf.get_section_by_name(".gnu.version_d")
    names: dict[int, str] = {}
    if verdef is not None:
        for definition, aux in verdef.iter_versions():
            first = next(iter(aux), None)
            if first is not None:
                names[definition["vd_ndx"]] = first.name
    return versym, names


def _symbols_of(elf: Any, into: dict[str, list[Symbol]], sections: tuple[str, ...]) -> None:
    for section_name in sections:
        section = elf.get_section_by_name(section_name)
        if section is None or not hasattr(section, "iter_symbols"):
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
    if section is None:
        return None
    for note in section.iter_notes():
        if note["n_type"] == "NT_GNU_BUILD_ID":
            return str(note["n_desc"])
    return None


def load_elf(path: Path, debug_root: str = "/") -> ElfInfo:
    """Read segments and symbols of an ELF file (and of its build-id debug file when stripped)."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            segments = tuple(
                Segment(seg["p_vaddr"], seg["p_offset"], seg["p_filesz"], bool(seg["p_flags"] & P_FLAGS.PF_X))
                for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD")
            symbols: dict[str, list[Symbol]] = {}
            _symbols_of(elf, symbols, (".symtab", ".dynsym"))
            has_symtab = elf.get_section_by_name(".symtab") is not None
            build_id = None if has_symtab else _build_id(elf)
            if not segments:
                raise ResolveError(f"{path} has no loadable segments (not an executable or library)",
                                   binary=str(path))
        if build_id:
            _load_debug_symbols(build_id, debug_root, symbols)
    except ELFError as exc:
        raise ResolveError(f"{path} is not a valid ELF file: {exc}", binary=str(path)) from exc
    except OSError as exc:
        raise ResolveError(f"cannot read {path}: {exc.strerror}", binary=str(path)) from exc
    return ElfInfo(path, segments, symbols)


def _load_debug_symbols(build_id: str, root: str, symbols: dict[str, list[Symbol]]) -> None:
    debug = os.path.join(root, "usr/lib/debug/.build-id", build_id[:2], build_id[2:] + ".debug")
    if not os.path.isfile(debug):
        return
    with open(debug, "rb") as f:
        extra: dict[str, list[Symbol]] = {}
        _symbols_of(ELFFile(f), extra, (".symtab",))
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


def close_functions(info: ElfInfo, pattern: str, n: int = 5) -> list[str]:
    """Function names close to ``pattern`` (its glob characters dropped), closest first, for a search
    that matched nothing: case-insensitive matches first, then difflib's closest spellings."""
    word = pattern.strip("*?[]")
    names = sorted({s.name for s in info.functions()})
    folded = [name for name in names if word and word.lower() in name.lower()]
    close = difflib.get_close_matches(word, names, n=n, cutoff=0.6) if word else []
    return list(dict.fromkeys([*folded[:n], *close]))[:n]
