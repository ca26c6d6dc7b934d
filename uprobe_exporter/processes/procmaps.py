"""Pure: ``/proc/<pid>/maps`` and ``/proc/<pid>/mountinfo`` → mapped files and overlay mounts.

    55d0c3a00000-55d0c3a01000 r--p 00000000 fd:01 1234567                    /usr/sbin/nginx
    36 35 0:52 / /var/lib/x/merged rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w

On overlayfs neither ``stat()`` of the overlay path nor ``maps`` (measured on 6.18: it shows the
overlay's device, fs/proc/task_mmu.c prints the user-visible inode of a backing file) names the real
file, yet a uprobe attaches to the real (upper or lower layer) inode (trace_uprobe.c: ``d_real_inode``):
two containers of one image run one lower-layer file. ``layer_candidates`` finds where that file is,
from the overlay's ``lowerdir``/``upperdir`` in ``mountinfo``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of ``maps`` that maps a file."""

    start: int
    end: int
    perms: str
    offset: int
    dev: int  # os.makedev(major, minor), comparable with os.stat().st_dev
    inode: int
    path: str


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of ``mountinfo``: where it is, what it is, and the overlay layers when it is one."""

    mount_point: str
    fstype: str
    root: str  # the part of the file system mounted there
    lowerdirs: tuple[str, ...] = ()
    upperdir: str = ""


def _makedev(major: int, minor: int) -> int:
    # glibc's gnu_dev_makedev (what os.makedev computes)
    return ((major & 0xFFFFF000) << 32) | ((major & 0xFFF) << 8) | ((minor & 0xFFFFFF00) << 12) | (minor & 0xFF)


def parse_maps(text: str) -> tuple[Mapping, ...]:
    """The file mappings (inode ≠ 0, a path) of a ``maps`` text; anonymous and special ones are left out."""
    out = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue
        addr, perms, offset, dev, inode, path = fields
        if inode == "0":
            continue
        start, _, end = addr.partition("-")
        major, _, minor = dev.partition(":")
        out.append(Mapping(int(start, 16), int(end, 16), perms, int(offset, 16), _makedev(int(major, 16),
                           int(minor, 16)), int(inode), path))
    return tuple(out)


def mapped_paths(maps: tuple[Mapping, ...]) -> tuple[str, ...]:
    """The distinct paths of the files mapped, in the order of their first mapping."""
    return tuple(dict.fromkeys(m.path for m in maps))


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` (fs/proc_namespace.c: mangle)."""
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), field)


def _split_layers(value: str) -> tuple[str, ...]:
    """``lowerdir=a:b`` with ``\\:`` for a colon inside a path (fs/overlayfs/params.c)."""
    layers, cur, i = [], [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            cur.append(value[i + 1])
            i += 2
            continue
        if c == ":":
            layers.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    layers.append("".join(cur))
    return tuple(x for x in layers if x)


def _super_options(text: str) -> list[str]:
    """Super options split on commas not escaped by a backslash."""
    return re.split(r"(?<!\\),", text)


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split(" ", 2)
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount = Mount(unescape(fields[4]), tail[0], unescape(fields[3]))
        if tail[0] == "overlay":
            lower: list[str] = []
            upper = ""
            for opt in _super_options(tail[2]):
                key, _, value = opt.partition("=")
                value = unescape(value)
                if key == "lowerdir":
                    lower.extend(_split_layers(value))
                elif key in ("lowerdir+", "datadir+"):
                    lower.append(value)
                elif key == "upperdir":
                    upper = value
            mount = Mount(mount.mount_point, mount.fstype, mount.root, tuple(lower), upper)
        out.append(mount)
    return tuple(out)


def mount_of(mounts: tuple[Mount, ...], path: str) -> Mount | None:
    """The mount ``path`` is under (the last mounted of the longest mount point: it hides the others)."""
    best: Mount | None = None
    for m in mounts:
        mp = m.mount_point.rstrip("/")
        if (path == m.mount_point or path.startswith(mp + "/")) and (best is None or len(mp) >= len(
                best.mount_point.rstrip("/"))):
            best = m
    return best


def layer_candidates(mounts: tuple[Mount, ...], path: str) -> tuple[str, ...]:
    """Where the real file behind ``path`` may be when it is on overlayfs: the upper dir, then each lower
    dir, each joined with the path inside the mount (paths in the mounter's mount namespace)."""
    m = mount_of(mounts, path)
    if m is None or m.fstype != "overlay":
        return ()
    rel = path[len(m.mount_point.rstrip("/")):].lstrip("/")
    inner = (m.root.rstrip("/") + "/" + rel).lstrip("/")
    return tuple(f"{d.rstrip('/')}/{inner}" for d in ((m.upperdir,) if m.upperdir else ()) + m.lowerdirs)
