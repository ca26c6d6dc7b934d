"""The native twins own their state: the module is defined once with multi-phase init, its types cannot be
used half-built or subclassed into a crash, and each C source says which Python twin it mirrors.

Misuse that used to crash runs in a subprocess, so a segfault fails the test instead of killing pytest."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from uprobe_exporter import _native

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "uprobe_exporter" / "native"


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter on this tree; a crash (a signal) fails the calling test."""
    done = subprocess.run([sys.executable, "-X", "dev", "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode >= 0, f"crashed with signal {-done.returncode}: {done.stderr[-2000:]}"
    assert done.returncode == 0, done.stderr[-2000:]
    return done


# ---- the module ------------------------------------------------------------------------------------------

def test_the_module_uses_multi_phase_init() -> None:
    """PEP 489: every execution makes a new module object (single-phase init hands back the cached one)."""
    spec = importlib.util.find_spec("uprobe_exporter._native")
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh is not _native
    assert fresh.Pairing is _native.Pairing  # static types, readied once
    assert fresh.__name__ == "uprobe_exporter._native"
    assert sorted(n for n in dir(fresh) if not n.startswith("_")) == sorted(
        n for n in dir(_native) if not n.startswith("_"))


def test_the_module_survives_reload_and_reimport() -> None:
    run_isolated("""
        import importlib, sys
        import uprobe_exporter._native as a
        importlib.reload(a)
        del sys.modules["uprobe_exporter._native"]
        import uprobe_exporter._native as b
        assert b is not a and b.Pairing is a.Pairing
        b.Pairing(tuple).enter("p", 1, 0, 5)
    """)


def test_free_threaded_builds_do_not_trip_warnings_as_errors() -> None:
    """3.13t is not a target: importing the extension there re-enables the GIL with a RuntimeWarning,
    which the suite's filterwarnings lets through (and only that one)."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    filters = options["filterwarnings"]
    assert filters[0] == "error"
    (gil,) = [f for f in filters if "GIL" in f]
    action, message, category = gil.split(":")
    assert action == "ignore" and category == "RuntimeWarning"
    assert re.match(message, "The global interpreter lock (GIL) has been enabled to load module "
                    "'uprobe_exporter._native', which has not declared that it can run safely without the GIL.")
    module_c = (NATIVE / "module.c").read_text()
    assert "Py_mod_gil, Py_MOD_GIL_USED" in module_c and "#ifdef Py_GIL_DISABLED" in module_c


def test_each_c_source_names_its_python_twin_and_no_stale_file_names() -> None:
    module_c = (NATIVE / "module.c").read_text()
    header = module_c.split("*/", 1)[0]
    sources = sorted(p.name for p in NATIVE.glob("*.c"))
    built = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"][0]["sources"]
    assert sorted(Path(s).name for s in built) == sources, "pyproject builds every source in native/"
    for name in sources:
        if name != "module.c":
            assert re.search(rf"^ \*\s+{re.escape(name)}\s", header, re.M), f"module.c lists {name} with its twin"
    for twin in re.findall(r"(\w+(?:/\w+)*\.py)", header):
        assert (ROOT / "uprobe_exporter" / twin).is_file(), f"module.c names a missing twin {twin}"
    stale = re.compile(r"\b_(walk|native|pairing|merge|lines|histogram)\.c\b")
    for path in [*NATIVE.glob("*.[ch]"), ROOT / "uprobe_exporter" / "_native.pyi"]:
        text = path.read_text()
        assert not stale.search(text), f"{path.name} names a source by its old name: {stale.search(text)}"
        assert "PyInit__native" not in text or path.name == "module.c"
