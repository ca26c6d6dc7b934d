"""Find the real file behind a configured ``binary``: a path, a ``/proc/<pid>/root/...`` path, or a
library name resolved like the dynamic loader, all inside a root (``exporter.host_root``); and notice
when the file at a probed path is replaced later (``BinaryWatch``).

Symlinks are followed to the real file, and inside the root: an absolute link target such as
``/usr/lib/libfoo.so.1`` means ``<root>/usr/lib/libfoo.so.1``, as it would to a process on the host.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from uprobe_exporter.errors import ResolveError, is_gone, mapped_oserror, os_errors
from uprobe_exporter.plan.ldcache import parse_ld_so_cache

MAX_SYMLINKS = 40  # like the kernel's MAXSYMLINKS
PROC_ROOT_RE = re.compile(r"(/proc/\d+/root)(/.*)\Z")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib",
                    "/usr/lib", "/usr/local/lib")


def realpath_in_root(root: str, path: str) -> str:
    """Resolve ``path`` (absolute, as seen by a process whose ``/`` is ``root``) to a real file path
    inside ``root``; returns the path relative to the root, starting with ``/``."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise ResolveError(f"too many levels of symbolic links in {path}", binary=path)
            with os_errors(ResolveError, f"cannot read the link {candidate}", path=path):
                target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return "/" + "/".join(resolved)


def _join_root(root: str, inner: str) -> str:
    return inner if root == "/" else root.rstrip("/") + inner


def _ld_library_dirs(root: str) -> list[str]:
    """Directories from ``/etc/ld.so.conf`` (and its ``include`` globs), for a cache-less system."""
    dirs: list[str] = []

    def read(conf: str) -> None:
        try:
            text = Path(_join_root(root, conf)).read_text()
        except OSError:  # a lookup: a configuration file ld.so would skip, we skip too
            return
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("include "):
                pattern = line.split(None, 1)[1]
                for inc in sorted(Path(_join_root(root, "/")).glob(pattern.lstrip("/"))):
                    read("/" + str(inc.relative_to(_join_root(root, "/"))))
            elif line:
                dirs.append(line)

    read("/etc/ld.so.conf")
    return dirs


def find_program(name: str, root: str) -> str | None:
    """The ELF executable ``name`` on ``PATH`` (inside ``root``, the standard directories), like a shell."""
    dirs = os.environ.get("PATH", DEFAULT_PATH) if root == "/" else DEFAULT_PATH
    for d in dirs.split(":"):
        if not d.startswith("/"):
            continue
        candidate = _join_root(root, f"{d.rstrip('/')}/{name}")
        try:
            with open(candidate, "rb") as f:
                if os.access(candidate, os.X_OK) and f.read(4) == b"\x7fELF":
                    return f"{d.rstrip('/')}/{name}"
        except OSError:  # a lookup: not there or not readable, as a shell would try the next directory
            continue
    return None


def resolve_library(name: str, root: str) -> str:
    """``libc.so.6`` → ``/lib/x86_64-linux-gnu/libc.so.6`` (inside ``root``), as ld.so would find it."""
    try:
        cache = parse_ld_so_cache(Path(_join_root(root, "/etc/ld.so.cache")).read_bytes())
    except (OSError, ValueError):  # a lookup: no usable cache, the directories are searched instead
        cache = {}
    if name in cache:
        return cache[name]
    for d in (*_ld_library_dirs(root), *DEFAULT_LIB_DIRS):
        if os.path.isfile(_join_root(root, realpath_in_root(root, f"{d}/{name}"))):
            return f"{d}/{name}"
    program = find_program(name, root)
    close = difflib.get_close_matches(name, list(cache), n=3)
    if program is not None:  # `symbols bash`: a program, not a library
        hint = f"; did you mean {program} (found on PATH)?"
    else:
        hint = f"; did you mean {', '.join(close)}?" if close else "; give its full path instead"
    raise ResolveError(f"library '{name}' not found in {_join_root(root, '/etc/ld.so.cache')} or the "
                       f"default library directories{hint}", binary=name)


def resolve_binary(binary: str, host_root: str = "/") -> Path:
    """The path to give the kernel for ``binary``: a real regular file, symlinks followed."""
    m = PROC_ROOT_RE.match(binary)
    if m:  # another process's view of the filesystem: the kernel follows /proc/<pid>/root itself
        root, inner = m[1], m[2]
    elif "/" in binary:
        root, inner = host_root, binary
    else:
        root, inner = host_root, resolve_library(binary, host_root)
    if not inner.startswith("/"):
        raise ResolveError(f"'{binary}' must be an absolute path or a library name such as libc.so.6",
                           binary=binary)
    real = _join_root(root, realpath_in_root(root, inner))
    try:
        os.stat(real)
    except OSError as exc:
        if is_gone(exc.errno):
            raise ResolveError(f"'{binary}' does not exist (looked for {real})", binary=binary) from None
        # /proc/<pid>/root: the kernel's ptrace access check refuses a process with capabilities
        # the caller lacks, unless the caller has CAP_SYS_PTRACE.
        fix = dict.fromkeys((errno.EACCES, errno.EPERM), "another process's root needs CAP_SYS_PTRACE") if m else ""
        raise mapped_oserror(exc, ResolveError, f"'{binary}' cannot be reached ({real})", path=binary,
                             fix=fix) from exc
    if not os.path.isfile(real):
        raise ResolveError(f"'{binary}' is not a regular file ({real})", binary=binary)
    return Path(real)


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file a path names, and which version of it: a rebuild that renames a new file over the
    path changes ``dev``/``ino``; one that writes the file in place changes ``mtime_ns``/``size``."""

    dev: int
    ino: int
    mtime_ns: int
    size: int


def read_identity(path: str) -> FileIdentity | None:
    """The identity of the file at ``path`` now; None when there is none (removed, or its process exited
    for a ``/proc/<pid>/root`` path)."""
    try:
        st = os.stat(path)
    except OSError:  # none to tell: the file or its process is gone (the callers compare identities)
        return None
    return FileIdentity(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True, slots=True)
class BinaryChange:
    """The file at a probed path is no longer the one it was at the last check."""

    path: str
    was: FileIdentity | None
    now: FileIdentity | None

    @property
    def kind(self) -> str:
        """``removed``; ``replaced`` (another file: new inode or device); ``modified`` (written in place)."""
        if self.now is None:
            return "removed"
        if self.was is None or (self.was.dev, self.was.ino) != (self.now.dev, self.now.ino):
            return "replaced"
        return "modified"


class BinaryWatch:
    """The probed binaries as they were when their probes were planned; ``check`` reports each change.

    The kernel places a uprobe on the inode the path named at registration: when a rebuild renames a new
    file over the path, the probe stays on the old file and processes started from the new one are not
    probed; when it writes the file in place, the probe's offset now lands in other code. ``replaced``
    counts, per path, every time a file (other than none) is found where the previous one was.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self.seen = {path: read_identity(path) for path in sorted(set(paths))}
        self.replaced = dict.fromkeys(self.seen, 0)

    def check(self) -> list[BinaryChange]:
        changes = []
        for path, was in self.seen.items():
            now = read_identity(path)
            if now != was:
                self.seen[path] = now
                changes.append(BinaryChange(path, was, now))
                if now is not None:
                    self.replaced[path] += 1
        return changes
