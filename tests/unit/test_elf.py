"""elf: symbol → file offset agrees with ``objdump -d -F`` for PIE, non-PIE and a shared library."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from uprobe_exporter.errors import ResolveError, UprobeExporterError
from uprobe_exporter.plan.elf import ElfInfo, Segment, Symbol, load_elf, match_functions

TARGETS = Path(__file__).parent.parent / "targets"
OBJDUMP_FUNC = re.compile(r"^[0-9a-f]+ <(?P<name>[^>]+)> \(File Offset: 0x(?P<off>[0-9a-f]+)\):$", re.M)

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("objdump")), reason="needs gcc and objdump")


@dataclass(frozen=True)
class Built:
    path: Path
    offsets: dict[str, int]  # function → file offset, as objdump prints it


def objdump_offsets(path: Path) -> dict[str, int]:
    out = subprocess.run(["objdump", "-d", "-F", str(path)], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    return {m["name"]: int(m["off"], 16) for m in OBJDUMP_FUNC.finditer(out)}


def gcc(source: str, out: Path, *flags: str) -> Built:
    subprocess.run(["gcc", "-O0", "-g", "-pthread", *flags, "-o", str(out), str(TARGETS / source)], check=True,
                   timeout=120)
    return Built(out, objdump_offsets(out))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    d = tmp_path_factory.mktemp("elf")
    return {
        "pie": gcc("calls.c", d / "calls_pie", "-pie", "-fPIE"),
        "no-pie": gcc("calls.c", d / "calls_nopie", "-no-pie", "-fno-pie"),
        "shared": gcc("shared.c", d / "libshared.so", "-shared", "-fPIC"),
    }


@pytest.mark.parametrize(("variant", "function"), [
    ("pie", "work"), ("pie", "recurse"), ("pie", "main"),
    ("no-pie", "work"), ("no-pie", "recurse"), ("no-pie", "main"),
    ("shared", "shared_add"),
])
def test_resolve_equals_objdump_file_offset(built: dict[str, Built], variant: str, function: str) -> None:
    b = built[variant]
    assert function in b.offsets
    info = load_elf(b.path)
    assert info.resolve(function) == b.offsets[function]
    assert info.offset_is_executable(b.offsets[function])


def test_non_pie_addresses_differ_from_offsets(built: dict[str, Built]) -> None:
    """Without PIE the symbol value is a link-time address; the offset comes from the PT_LOAD segment."""
    info = load_elf(built["no-pie"].path)
    (work,) = info.symbols["work"]
    assert work.value != built["no-pie"].offsets["work"]
    assert info.file_offset(work.value) == built["no-pie"].offsets["work"]


def test_symbol_plus_offset(built: dict[str, Built]) -> None:
    b = built["pie"]
    info = load_elf(b.path)
    assert info.resolve("work", plus=4) == b.offsets["work"] + 4
    size = next(s.size for s in info.symbols["work"] if s.type == "STT_FUNC")
    assert size > 4
    assert info.resolve("work", plus=size - 1) == b.offsets["work"] + size - 1
    with pytest.raises(ResolveError, match="past the end of the function"):
        info.resolve("work", plus=size)


def test_functions_and_match_functions_list_the_targets_functions(built: dict[str, Built]) -> None:
    b = built["pie"]
    info = load_elf(b.path)
    names = [s.name for s in info.functions()]
    assert {"work", "recurse", "main"} <= set(names)
    assert names == sorted(set(names))
    assert "work_calls" not in names  # a data symbol
    for sym, offset in match_functions(info, None):
        if sym.name in b.offsets:
            assert offset == b.offsets[sym.name]
    assert [(s.name, off) for s, off in match_functions(info, "rec*")] == [("recurse", b.offsets["recurse"])]
    assert ("work", b.offsets["work"]) in [(s.name, off) for s, off in match_functions(info, "wor")]
    assert match_functions(info, "no_such_function_here") == []


def test_a_data_symbol_is_not_a_function(built: dict[str, Built]) -> None:
    info = load_elf(built["pie"].path)
    with pytest.raises(ResolveError) as exc:
        info.resolve("work_calls")
    assert "is not a function but object" in str(exc.value)
    assert exc.value.symbol == "work_calls"
    assert exc.value.binary == str(built["pie"].path)


@pytest.mark.parametrize(("typo", "hint"), [("wrok", "work"), ("recurs", "recurse"), ("shared_ad", "shared_add")])
def test_unknown_name_suggests_close_names(built: dict[str, Built], typo: str, hint: str) -> None:
    b = built["shared" if hint.startswith("shared") else "pie"]
    with pytest.raises(ResolveError) as exc:
        load_elf(b.path).resolve(typo)
    assert f"did you mean '{hint}'" in str(exc.value)
    assert exc.value.symbol == typo
    assert isinstance(exc.value, UprobeExporterError)


def test_unknown_name_without_close_names_says_how_to_list(built: dict[str, Built]) -> None:
    with pytest.raises(ResolveError, match="uprobe-exporter symbols"):
        load_elf(built["pie"].path).resolve("zzzzzzzzzzzzzzzz")


VERSIONED_C = """
__asm__(".symver add_old, add@V1");
__asm__(".symver add_new, add@@V2");
long add_old(long a) { return a + 1; }
long add_new(long a) { return a + 2; }
"""
VERSION_SCRIPT = "V1 { global: add; local: add_old; add_new; };\nV2 { global: add; } V1;\n"


def test_symbol_versions_pick_the_right_function(tmp_path: Path) -> None:
    """Two versions of one name (like glibc's realpath@GLIBC_2.2.5 and realpath@@GLIBC_2.3): a plain name
    is the default version (@@), name@VERSION the one asked for."""
    (tmp_path / "v.c").write_text(VERSIONED_C)
    (tmp_path / "v.map").write_text(VERSION_SCRIPT)
    lib = tmp_path / "libv.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f"-Wl,--version-script={tmp_path / 'v.map'}", "-o", str(lib),
                    str(tmp_path / "v.c")], check=True, timeout=60)
    dynsyms = subprocess.run(["objdump", "-T", str(lib)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"\(V1\)\s+add$", dynsyms, re.M)
    assert re.search(r"V2\s+add$", dynsyms, re.M)
    listing = subprocess.run(["objdump", "-d", "-F", str(lib)], capture_output=True, text=True, check=True).stdout
    offsets = {m[1]: int(m[2], 16) for m in re.finditer(r"<(add@@?V\d)> \(File Offset: 0x([0-9a-f]+)\):", listing)}
    assert offsets["add@V1"] != offsets["add@@V2"]
    info = load_elf(lib)
    assert info.resolve("add") == offsets["add@@V2"]
    assert info.resolve("add@@V2") == offsets["add@@V2"]
    assert info.resolve("add@V2") == offsets["add@@V2"]
    assert info.resolve("add@V1") == offsets["add@V1"]
    with pytest.raises(ResolveError, match="has no version V3; it has V1, V2"):
        info.resolve("add@V3")


def test_stripped_binary_uses_the_build_id_debug_file(built: dict[str, Built], tmp_path: Path) -> None:
    b = built["pie"]
    stripped = tmp_path / "calls_stripped"
    debug = tmp_path / "calls.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(b.path), str(debug)], check=True, timeout=60)
    subprocess.run(["objcopy", "--strip-all", str(b.path), str(stripped)], check=True, timeout=60)
    notes = subprocess.run(["readelf", "-n", str(stripped)], capture_output=True, text=True, check=True).stdout
    build_id = re.search(r"Build ID: ([0-9a-f]+)", notes)
    assert build_id is not None, "gcc adds a build-id note here"
    with pytest.raises(ResolveError):
        load_elf(stripped, debug_root=str(tmp_path)).resolve("work")  # no debug file yet
    where = tmp_path / "root" / "usr/lib/debug/.build-id" / build_id[1][:2] / f"{build_id[1][2:]}.debug"
    where.parent.mkdir(parents=True)
    shutil.copy(debug, where)
    info = load_elf(stripped, debug_root=str(tmp_path / "root"))
    assert info.resolve("work") == b.offsets["work"]


def test_not_an_elf_file(tmp_path: Path) -> None:
    path = tmp_path / "calls.c"
    shutil.copy(TARGETS / "calls.c", path)
    with pytest.raises(ResolveError, match="not a valid ELF file") as exc:
        load_elf(path)
    assert exc.value.binary == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ResolveError, match="cannot read"):
        load_elf(tmp_path / "nothing")


def test_load_returns_frozen_info(built: dict[str, Built]) -> None:
    info = load_elf(built["shared"].path)
    assert isinstance(info, ElfInfo)
    assert any(s.executable for s in info.segments)
    with pytest.raises(AttributeError):
        info.path = Path("/")  # type: ignore[misc]


def test_elf_header_followed_by_garbage(built: dict[str, Built], tmp_path: Path) -> None:
    """pyelftools raised a bare ValueError here (a seek to an offset read from the garbage)."""
    path = tmp_path / "garbage"
    path.write_bytes(built["pie"].path.read_bytes()[:64] + random.Random(1).randbytes(100_000))
    with pytest.raises(ResolveError, match=r"garbage is not a valid ELF file \(") as exc:
        load_elf(path)
    assert exc.value.binary == str(path)


MUTANTS = 120  # per binary, ≈3 s each on this busy VM; 17,000 mutants of 6 binaries (C, Go, libraries) showed no others


def _mutants(data: bytes, regions: list[tuple[int, int]], rng: random.Random) -> bytes:
    """``data`` truncated, or with bytes of its headers and tables overwritten by random or extreme values."""
    out = bytearray(data)
    if rng.random() < 0.15:
        return bytes(out[:rng.randrange(16, len(out))])
    for _ in range(rng.randrange(1, 6)):
        start, size = rng.choice(regions)
        at = start + rng.randrange(size)
        width = rng.choice((1, 2, 4, 8))
        value = rng.choice((0, 1, 0xFF, 0x7FFF, 2**31, 2**63, 2**64 - 1, rng.randrange(2**64)))
        out[at:at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(out)


def _regions(path: Path) -> list[tuple[int, int]]:
    """Where the headers, the section table and the tables load_elf reads lie in ``path``."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        regions = [(0, 64), (elf["e_phoff"], elf["e_phnum"] * elf["e_phentsize"]),
                   (elf["e_shoff"], elf["e_shnum"] * elf["e_shentsize"])]
        regions += [(s["sh_offset"], min(s["sh_size"], 4096)) for s in elf.iter_sections()
                    if s["sh_type"] != "SHT_NOBITS" and s.name in (
                        ".symtab", ".strtab", ".dynsym", ".dynstr", ".shstrtab", ".gnu.version", ".gnu.version_d",
                        ".note.gnu.build-id")]
    return [r for r in regions if r[1] > 0]


@pytest.mark.parametrize("variant", ["pie", "no-pie", "shared"])
def test_a_corrupt_binary_is_always_a_resolve_error(built: dict[str, Built], tmp_path: Path, variant: str) -> None:
    """Truncated and overwritten binaries: pyelftools raised ValueError, ArrayError, AttributeError... Every
    one must load or be a ResolveError that names the file (found by a longer run of this same fuzzing)."""
    source = built[variant].path
    data, regions = source.read_bytes(), _regions(source)
    rng = random.Random(variant)
    path = tmp_path / "mutant"
    refusals: list[str] = []
    for _ in range(MUTANTS):
        path.write_bytes(_mutants(data, regions, rng))
        try:
            load_elf(path)
        except ResolveError as exc:
            refusals.append(str(exc))
    assert len(refusals) > MUTANTS // 5  # the mutations do reach the parser's failure paths
    assert all(str(path) in message and "\n" not in message for message in refusals)


def test_go_register_abi_from_the_version_or_the_abi_wrappers() -> None:
    def info(version: str | None, *names: str) -> ElfInfo:
        syms = {n: [Symbol(n, 0x1000, 8, "STT_FUNC")] for n in names}
        return ElfInfo(Path("/x"), (Segment(0, 0, 0x2000, True),), syms, version)

    assert info("go1.19.8").go_register_abi() and info("go1.17").go_register_abi()
    assert not info("go1.16.15").go_register_abi()
    assert info("", "runtime.morestack_noctxt.abi0").go_register_abi()  # Go 1.17: no inline version
    assert not info("", "runtime.morestack_noctxt").go_register_abi()  # Go < 1.17
