"""binaries: symlinks followed inside a root (absolute targets re-rooted), libraries found like ld.so."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from uprobe_exporter.errors import ResolveError
from uprobe_exporter.plan.binaries import BinaryWatch, read_identity, realpath_in_root, resolve_binary, resolve_library


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small filesystem tree whose links point at absolute paths, as they do on a host or in an image.

        /usr/lib/libfoo.so.1.2.3            a file
        /usr/lib/libfoo.so.1 -> /usr/lib/libfoo.so.1.2.3   (absolute)
        /lib -> usr/lib                     (relative)
        /lib64 -> /lib                      (absolute, to a link)
        /usr/bin/tool                       a file
        /bin -> /usr/bin
        /opt/app/current -> ../app/v2       (relative, with ..)
        /opt/app/v2/run -> /bin/tool
        /loop/a -> /loop/b, /loop/b -> /loop/a
    """
    r = tmp_path / "root"
    (r / "usr/lib").mkdir(parents=True)
    (r / "usr/bin").mkdir(parents=True)
    (r / "opt/app/v2").mkdir(parents=True)
    (r / "loop").mkdir()
    (r / "usr/lib/libfoo.so.1.2.3").write_bytes(b"\x7fELF")
    (r / "usr/bin/tool").write_bytes(b"\x7fELF")
    os.symlink("/usr/lib/libfoo.so.1.2.3", r / "usr/lib/libfoo.so.1")
    os.symlink("usr/lib", r / "lib")
    os.symlink("/lib", r / "lib64")
    os.symlink("/usr/bin", r / "bin")
    os.symlink("../app/v2", r / "opt/app/current")
    os.symlink("/bin/tool", r / "opt/app/v2/run")
    os.symlink("/loop/b", r / "loop/a")
    os.symlink("/loop/a", r / "loop/b")
    return r


@pytest.mark.parametrize(("path", "real"), [
    ("/usr/lib/libfoo.so.1", "/usr/lib/libfoo.so.1.2.3"),
    ("/lib/libfoo.so.1", "/usr/lib/libfoo.so.1.2.3"),
    ("/lib64/libfoo.so.1", "/usr/lib/libfoo.so.1.2.3"),
    ("/bin/tool", "/usr/bin/tool"),
    ("/opt/app/current/run", "/usr/bin/tool"),
    ("/opt/./app/../app/current/run", "/usr/bin/tool"),
    ("/../../usr/bin/tool", "/usr/bin/tool"),  # ".." stops at the root, as it does for a chrooted process
    ("/usr/bin/not-yet", "/usr/bin/not-yet"),
])
def test_realpath_in_root(root: Path, path: str, real: str) -> None:
    assert realpath_in_root(str(root), path) == real
    assert (root / real.lstrip("/")).exists() == (not real.endswith("not-yet"))


def test_absolute_link_never_escapes_the_root(root: Path) -> None:
    """/bin/sh exists on this machine but not in the root: the link is followed inside the root only."""
    assert Path("/bin/sh").exists()
    os.symlink("/bin/sh", root / "usr/bin/shell")
    assert realpath_in_root(str(root), "/usr/bin/shell") == "/usr/bin/sh"  # via the root's /bin -> /usr/bin
    with pytest.raises(ResolveError, match="does not exist"):
        resolve_binary("/usr/bin/shell", str(root))


def test_symlink_loop(root: Path) -> None:
    with pytest.raises(ResolveError, match="too many levels of symbolic links"):
        realpath_in_root(str(root), "/loop/a")


def test_resolve_binary_in_a_root(root: Path) -> None:
    assert resolve_binary("/opt/app/current/run", str(root)) == Path(f"{root}/usr/bin/tool")
    with pytest.raises(ResolveError, match="does not exist"):
        resolve_binary("/usr/bin/none", str(root))
    with pytest.raises(ResolveError, match="not a regular file"):
        resolve_binary("/usr/lib", str(root))


def test_library_from_ld_so_conf_without_a_cache(root: Path) -> None:
    (root / "etc/ld.so.conf.d").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("# comment\ninclude /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/app.conf").write_text("/opt/lib  # the app's libraries\n")
    (root / "opt/lib").mkdir()
    (root / "opt/lib/libbar.so.2").write_bytes(b"\x7fELF")
    assert resolve_library("libbar.so.2", str(root)) == "/opt/lib/libbar.so.2"
    assert resolve_binary("libbar.so.2", str(root)) == Path(f"{root}/opt/lib/libbar.so.2")
    with pytest.raises(ResolveError, match=r"library 'libnosuch\.so\.9' not found"):
        resolve_library("libnosuch.so.9", str(root))


def test_library_in_a_default_directory_behind_an_absolute_link(tmp_path: Path) -> None:
    """ld.so on the host opens <dir>/libabs.so.1 and follows the link inside the host's root; so must the
    directory search, as realpath_in_root does (known bug: os.path.isfile follows it outside the root)."""
    lib = tmp_path / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (lib / "libabs.so.1.0").write_bytes(b"\x7fELF")
    os.symlink("/usr/lib/x86_64-linux-gnu/libabs.so.1.0", lib / "libabs.so.1")
    assert realpath_in_root(str(tmp_path), "/usr/lib/x86_64-linux-gnu/libabs.so.1") == \
        "/usr/lib/x86_64-linux-gnu/libabs.so.1.0"
    assert resolve_binary("libabs.so.1", str(tmp_path)) == lib / "libabs.so.1.0"


@pytest.mark.skipif(not Path("/etc/ld.so.cache").is_file() or not shutil.which("ldconfig"),
                    reason="no /etc/ld.so.cache or ldconfig")
def test_library_from_the_cache_of_the_root(root: Path) -> None:
    (root / "etc").mkdir()
    shutil.copy("/etc/ld.so.cache", root / "etc/ld.so.cache")
    listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True, timeout=30).stdout
    libc = next(line.split(" => ")[1] for line in listing.splitlines()
                if line.strip().startswith("libc.so.6 (libc6,x86-64") and " => " in line)
    assert resolve_library("libc.so.6", str(root)) == libc  # from the root's cache, not found on disk there
    with pytest.raises(ResolveError) as exc:
        resolve_library("libc.so.7", str(root))
    assert "did you mean" in str(exc.value)
    assert "libc.so.6" in str(exc.value)


def test_binary_watch_reports_each_change_of_a_probed_file(tmp_path: Path) -> None:
    probed, other = tmp_path / "app", tmp_path / "lib.so"
    probed.write_bytes(b"\x7fELF version 1")
    other.write_bytes(b"\x7fELF other")
    watch = BinaryWatch([str(probed), str(other), str(probed)])
    assert watch.replaced == {str(probed): 0, str(other): 0}
    assert watch.check() == []

    new = tmp_path / "app.new"  # a rebuild: write a new file, rename it over the old path (new inode)
    new.write_bytes(b"\x7fELF version 2")
    os.rename(new, probed)
    assert [c.kind for c in watch.check()] == ["replaced"]
    assert watch.check() == []  # reported once
    with open(probed, "ab") as f:  # written in place: same inode, another size and mtime
        f.write(b" and more")
    assert [(c.path, c.kind) for c in watch.check()] == [(str(probed), "modified")]
    probed.unlink()
    assert [c.kind for c in watch.check()] == ["removed"]
    probed.write_bytes(b"\x7fELF version 3")
    assert [c.kind for c in watch.check()] == ["replaced"]
    assert watch.replaced == {str(probed): 3, str(other): 0}  # a removal alone is not counted
    assert read_identity(str(other)) == watch.seen[str(other)]
