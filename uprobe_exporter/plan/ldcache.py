"""Pure parser of the dynamic loader's cache, ``/etc/ld.so.cache`` (glibc elf/cache.c, ldconfig).

Finding ``libc.so.6`` the way ``ld.so`` does means asking this cache first, then the default
directories. The new format ("glibc-ld.so.cache1.1") may follow an old-format block; string offsets
are relative to the start of the new-format header.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
FLAG_ELF_LIBC6 = 0x0003
FLAG_TYPE_MASK = 0x00FF
FLAG_REQUIRED_MASK = 0xFF00
FLAG_X8664_LIB64 = 0x0300
FLAG_AARCH64_LIB64 = 0x0A00
NEW_HEADER = struct.Struct("<20sII B3x I 12x")  # magic+version, nlibs, len_strings, flags, ext_off
NEW_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion, hwcap
OLD_HEADER = struct.Struct("<11sxI")  # magic[11], padding, nlibs (struct cache_file)
OLD_ENTRY = struct.Struct("<iII")


def _cstr(data: bytes, start: int) -> str:
    end = data.index(b"\0", start)
    return data[start:end].decode("utf-8", "surrogateescape")


def parse_ld_so_cache(data: bytes, arch_flags: int = FLAG_X8664_LIB64) -> Mapping[str, str]:
    """Map each soname in the cache to its path, for libraries of ``arch_flags`` (default x86-64)."""
    start = 0
    if data.startswith(OLD_MAGIC):
        _, nlibs = OLD_HEADER.unpack_from(data, 0)
        start = OLD_HEADER.size + nlibs * OLD_ENTRY.size
        start = (start + 7) & ~7  # the new block is aligned (ALIGN_CACHE)
    if not data.startswith(NEW_MAGIC, start):
        raise ValueError("not a glibc ld.so.cache (no glibc-ld.so.cache1.1 header)")
    _, nlibs, _, _, _ = NEW_HEADER.unpack_from(data, start)
    out: dict[str, str] = {}
    pos = start + NEW_HEADER.size
    for _ in range(nlibs):
        flags, key, value, _, _ = NEW_ENTRY.unpack_from(data, pos)
        pos += NEW_ENTRY.size
        if flags & FLAG_TYPE_MASK != FLAG_ELF_LIBC6 or flags & FLAG_REQUIRED_MASK != arch_flags:
            continue
        name = _cstr(data, start + key)
        out.setdefault(name, _cstr(data, start + value))  # first entry wins, like ld.so's search
    return out
