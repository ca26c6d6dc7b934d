"""The status part of backend.py: whether the native hot path (the ``uprobe_exporter._native``
extension) is in use, and if not, why.

The causes told apart: switched off on purpose (``UPROBE_EXPORTER_PURE=1``: backend.py then takes
the Python references everywhere and does not import the extension); built but shadowed by a source tree without a build
that comes first on ``sys.path`` (``python -m uprobe_exporter`` from a clone's root imports ``./uprobe_exporter``);
not built at install (no C compiler, or no ``Python.h``: what is missing now is said); built but failing
to import (the error). ``adopt_installed_build`` makes the shadowed case work where it is safe.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PACKAGE = "uprobe_exporter"
MODULE = f"{PACKAGE}._native"
PURE_ENV = "UPROBE_EXPORTER_PURE"


@dataclass(frozen=True, slots=True)
class NativeStatus:
    """``active`` and one phrase for the log and ``--version``: where it was loaded from, or why not."""

    active: bool
    detail: str

    def describe(self) -> str:
        return f"{'active' if self.active else 'off'} ({self.detail})"


def pure_requested() -> bool:
    """``UPROBE_EXPORTER_PURE`` set to anything but empty or ``0``: the Python references everywhere."""
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def _built_in(directory: Path) -> Path | None:
    """The extension file in ``directory`` for this interpreter, if there is one."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = directory / f"_native{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _other_builds(here: Path) -> list[Path]:
    """Built copies of the package elsewhere on ``sys.path`` (an installed one shadowed by ``here``)."""
    found: list[Path] = []
    for entry in sys.path:
        directory = Path(entry or os.getcwd()) / PACKAGE
        try:
            if directory.resolve() == here:
                continue
        except OSError:  # a lookup: a sys.path entry that cannot be resolved holds no build
            continue
        if (so := _built_in(directory)) is not None and so not in found:
            found.append(so)
    return found


def _missing_build_tools() -> str:
    """What a build of the extension lacks on this host now: the compiler, the headers, or nothing."""
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not include.is_file():
        return f"{include} is missing (Debian/Ubuntu: apt-get install python3-dev; Fedora: python3-devel)"
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}: apt-get install gcc)"
    return "a C compiler and Python.h are there now: reinstall (helm/install.sh) to build them"


def native_status() -> NativeStatus:
    """Import the extension (once; cached in ``sys.modules``) and say whether the native path is on."""
    if pure_requested():
        return NativeStatus(False, f"switched off on purpose: {PURE_ENV}={os.environ[PURE_ENV]}")
    here = _package_dir()
    try:
        module = importlib.import_module(MODULE)
    except ImportError as exc:
        error = exc
    else:
        where = Path(module.__file__ or "?")
        if where.parent.resolve() != here:
            return NativeStatus(True, f"{where}, the installed build: {here} is a source tree without one")
        return NativeStatus(True, str(where))
    if (so := _built_in(here)) is not None:
        return NativeStatus(False, f"{so} does not import: {error}")
    others = _other_builds(here)
    if others:
        return NativeStatus(False, f"built in {others[0].parent}, but shadowed by the source tree {here} (first on "
                                   "sys.path, as with python -m from a clone's root): run uprobe-exporter, or "
                                   "python -m from another directory")
    if (here / "native" / "emit.c").is_file():
        return NativeStatus(False, f"not built in this source tree {here}: install it (helm/install.sh), or "
                                   "python3 -c 'from setuptools import setup; setup()' build_ext --inplace; "
                                   + _missing_build_tools())
    return NativeStatus(False, f"not built at install: {_missing_build_tools()}")


def _python_sources(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*.py"))}


def adopt_installed_build() -> ModuleType | None:
    """``python -m uprobe_exporter`` from a clone's root imports the clone (``./uprobe_exporter``), which has
    no build when the package was installed elsewhere: then load the installed build's extension, if that
    installed copy's Python files are byte for byte this tree's (the extension was built with them). Call
    before anything imports the extension; returns the module loaded, or None."""
    here = _package_dir()
    if pure_requested() or MODULE in sys.modules or _built_in(here) is not None:
        return None
    try:
        mine = _python_sources(here)
        for so in _other_builds(here):
            if _python_sources(so.parent) != mine:
                continue
            spec = importlib.util.spec_from_file_location(MODULE, so)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[MODULE] = module
            sys.modules[PACKAGE]._native = module  # type: ignore[attr-defined]
            return module
    except (OSError, ImportError):  # a build that does not load: the reference is used
        return None  # native_status() then says why
    return None
