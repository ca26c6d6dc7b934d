"""ldcache: this machine's /etc/ld.so.cache read by the parser agrees with ``ldconfig -p`` on every soname."""

from __future__ import annotations

import functools
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from uprobe_exporter.plan.ldcache import FLAG_AARCH64_LIB64, FLAG_ELF_LIBC6, NEW_MAGIC, OLD_MAGIC, parse_ld_so_cache

CACHE = Path("/etc/ld.so.cache")
# "\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1"; the parentheses may add ", hwcap: ..."
# struct cache_file_new: magic+version[20], nlibs, len_strings, flags, pad[3], then extension_offset
EXTENSION_OFFSET_AT = 32
LDCONFIG_LINE = re.compile(r"\t(?P<name>\S+) \((?P<flags>[^)]*)\)(?: => (?P<path>.+))?\Z")

pytestmark = pytest.mark.skipif(not CACHE.is_file(), reason="no /etc/ld.so.cache on this system")


@functools.cache
def ldconfig_entries(cache: Path = CACHE) -> tuple[tuple[str, str, str], ...]:
    """(soname, flags, path) in cache order, as ``ldconfig -p`` prints them."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    out = subprocess.run([ldconfig, "-p", "-C", str(cache)], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    entries = []
    for line in out.splitlines()[1:]:
        m = LDCONFIG_LINE.match(line)
        if m is not None and m["path"]:
            entries.append((m["name"], m["flags"], m["path"]))
    return tuple(entries)


def first_per_name(flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, flags, path in ldconfig_entries():
        if [f.strip() for f in flags.split(",")][:2] == ["libc6", flag]:
            out.setdefault(name, path)
    return out


def test_every_x86_64_soname_agrees_with_ldconfig() -> None:
    expected = first_per_name("x86-64")
    assert expected, "ldconfig -p lists x86-64 libraries here"
    assert dict(parse_ld_so_cache(CACHE.read_bytes())) == expected


def test_libc_is_there() -> None:
    cache = parse_ld_so_cache(CACHE.read_bytes())
    assert "libc.so.6" in cache
    assert Path(cache["libc.so.6"]).is_file()


def test_other_architectures_are_left_out() -> None:
    assert dict(parse_ld_so_cache(CACHE.read_bytes(), FLAG_AARCH64_LIB64)) == first_per_name("AArch64")


def test_the_new_format_alone() -> None:
    """A cache without the old-format block in front (what ldconfig writes by default since glibc 2.32)."""
    data = CACHE.read_bytes()
    start = data.index(NEW_MAGIC)
    assert dict(parse_ld_so_cache(data[start:])) == first_per_name("x86-64")


def compat_cache(old_entries: int) -> bytes:
    """This machine's cache behind an old-format block, the layout ``ldconfig -c compat`` wrote (the default
    before glibc 2.32): glibc's ``struct cache_file`` is ``char magic[11]; unsigned int nlibs;`` (nlibs at
    offset 12, after one padding byte), then ``nlibs`` 12-byte ``struct file_entry``, then the new block at
    the next 8-byte boundary. The new header's ``extension_offset`` counts from the start of the file, so
    it is cleared here (no extensions is valid) rather than left pointing at the wrong place."""
    old = OLD_MAGIC + b"\0" + struct.pack("<I", old_entries)
    old += b"".join(struct.pack("<iII", FLAG_ELF_LIBC6, 0, 0) for _ in range(old_entries))
    old += b"\0" * (-len(old) % 8)
    new = bytearray(CACHE.read_bytes()[CACHE.read_bytes().index(NEW_MAGIC):])
    struct.pack_into("<I", new, EXTENSION_OFFSET_AT, 0)
    return old + bytes(new)


@pytest.mark.parametrize("old_entries", [0, 1, 2, 5])
def test_compat_format_with_an_old_block_in_front(old_entries: int, tmp_path: Path) -> None:
    data = compat_cache(old_entries)
    path = tmp_path / "ld.so.cache"
    path.write_bytes(data)
    assert ldconfig_entries(path) == ldconfig_entries(), "glibc's own reader accepts the file"
    assert dict(parse_ld_so_cache(data)) == first_per_name("x86-64")


@pytest.mark.parametrize("data", [b"", b"not a cache at all", b"ld.so-1.7.0\0\0\0\0\0"])
def test_not_a_cache(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"not a glibc ld\.so\.cache"):
        parse_ld_so_cache(data)
