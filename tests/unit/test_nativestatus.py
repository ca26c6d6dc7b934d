"""``--version`` and the daemon's log tell why the native path is off: switched off, shadowed by a source
tree, not built, or failing to import; and ``python -m`` from a clone's root uses the installed build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ExporterProcess, build_config, toml_dumps
from uprobe_exporter import _native
from uprobe_exporter.nativestatus import PURE_ENV

PACKAGE = Path(__file__).resolve().parents[2] / "uprobe_exporter"
SO = Path(_native.__file__ or "")


def copy_package(dest: Path, *, with_so: bool, with_sources: bool = True) -> Path:
    """A copy of the package in ``dest/uprobe_exporter``: an installed one (with the extension, without C
    sources) or a clone's source tree (C sources, no build)."""
    target = dest / "uprobe_exporter"
    skip = ["__pycache__", "*.so"] + ([] if with_sources else ["*.c"])
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns(*skip))
    if with_so:
        shutil.copy2(SO, target / SO.name)
    return target


@pytest.fixture(scope="module")
def dependencies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dependencies alone, so that ``python -S`` sees no other copy of the package (an editable install's
    finder, a site-packages one) than the test's."""
    import aiofiles
    import elftools
    import orjson
    import prometheus_client

    deps = tmp_path_factory.mktemp("deps")
    for module in (aiofiles, elftools, orjson, prometheus_client):
        src = Path(module.__file__ or "").parent
        shutil.copytree(src, deps / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    return deps


def native_line(deps: Path, cwd: Path, installed: Path | None = None, **env: str) -> str:
    """``python -m uprobe_exporter --version`` run in ``cwd`` (first on sys.path, as from a clone's root)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "UPROBE_EXPORTER_PURE")}
    environ["PYTHONPATH"] = os.pathsep.join([*([str(installed)] if installed else []), str(deps)])
    done = subprocess.run([sys.executable, "-S", "-m", "uprobe_exporter", "--version"], cwd=cwd,
                          capture_output=True, text=True, env={**environ, **env}, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[3]


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    copy_package(site, with_so=True, with_sources=False)
    return site


def test_a_clone_without_build_uses_the_installed_build_of_the_same_code(
    tmp_path: Path, installed: Path, dependencies: Path,
) -> None:
    clone = copy_package(tmp_path / "clone", with_so=False)
    line = native_line(dependencies, clone.parent, installed)
    assert line == (f"native path: active ({installed / 'uprobe_exporter' / SO.name}, the installed build: "
                    f"{clone} is a source tree without one)")


def test_a_changed_clone_is_reported_as_shadowing_the_installed_build(
    tmp_path: Path, installed: Path, dependencies: Path,
) -> None:
    clone = copy_package(tmp_path / "clone", with_so=False)
    with (clone / "render.py").open("a") as f:
        f.write("# edited\n")
    line = native_line(dependencies, clone.parent, installed)
    assert line == (f"native path: off (built in {installed / 'uprobe_exporter'}, but shadowed by the source tree "
                    f"{clone} (first on sys.path, as with python -m from a clone's root): run uprobe-exporter, or "
                    "python -m from another directory)")


def test_not_built_says_what_a_build_lacks(tmp_path: Path, dependencies: Path) -> None:
    copy_package(tmp_path / "site", with_so=False, with_sources=False)
    line = native_line(dependencies, tmp_path / "site")
    # gcc and Python.h are here (the extension was built): it says so, and that a reinstall builds it.
    assert line == ("native path: off (not built at install: a C compiler and Python.h are there now: "
                    "reinstall (helm/install.sh) to build them)")
    tree = copy_package(tmp_path / "tree", with_so=False)
    line = native_line(dependencies, tmp_path / "tree")
    assert line.startswith(f"native path: off (not built in this source tree {tree}: ")


def test_a_build_that_does_not_import_shows_the_error(tmp_path: Path, dependencies: Path) -> None:
    site = copy_package(tmp_path / "site", with_so=False, with_sources=False)
    (site / SO.name).write_bytes(bytes(4096))
    line = native_line(dependencies, tmp_path / "site")
    assert line.startswith(f"native path: off ({site / SO.name} does not import: ")
    assert "invalid ELF header" in line


def test_switched_off_on_purpose(dependencies: Path) -> None:
    assert native_line(dependencies, PACKAGE.parent, UPROBE_EXPORTER_PURE="1") == (
        "native path: off (switched off on purpose: UPROBE_EXPORTER_PURE=1)")


@pytest.mark.kernel
@pytest.mark.parametrize("pure", ["", "1"])
def test_the_daemon_logs_the_native_path_and_why_not(
    build: Callable[..., Path], group: str, tmp_path: Path, pure: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UPROBE_EXPORTER_PURE", pure)
    probe = {"name": "work", "binary": str(build("calls")), "function": "work", "return": True}
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], tmp_path / "out.jsonl")))
    with ExporterProcess(config) as exporter:
        exporter.wait_ready()
        rc, _ = exporter.stop()
    assert rc == 0, exporter.stderr
    expected = (f"native path for 0 of 2 events; native parts: off (switched off on purpose: {PURE_ENV}=1)" if pure
                else f"native path for 2 of 2 events; native parts: active ({SO})")
    assert f"uprobe-exporter: INFO: raw reader: {expected}\n" in exporter.stderr
