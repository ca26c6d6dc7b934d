"""Layering (STYLE.md §1): the pure modules never import the I/O shell, asyncio or aiofiles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "uprobe_exporter"
PURE = ("config", "fetchargs", "formatfile", "traceline", "records", "kerneltext", "ldcache", "pairing",
        "histogram", "render", "pipeline", "probes", "rawpage", "rawemit", "codegen", "stapsdt",
        "filters", "instructions", "costclass", "cgroup", "podlogs", "procmaps")
NATIVE = ("_native",)  # C extensions: pure computation, no I/O (uprobe_exporter/_*.c)
SHELL = ("tracefs", "daemon", "reader", "rawreader", "jsonl", "session", "cli", "elf", "binaries", "resolve", "metrics",
         "nativestatus", "ownership", "costprobe", "identity", "discover")
FORBIDDEN = {"asyncio", "aiofiles", "subprocess", "socket", "selectors"}  # (logging loads threading)
FILE_APIS = {"os", "io", "shutil", "pathlib", "tempfile", "fcntl", "mmap"}
# config.py also holds load_config_partial(), which reads the file and the packaged example (STYLE.md §12).
FILE_API_EXEMPT = {"config": {"pathlib"}}


def imports_of(module: str) -> set[str]:
    """Absolute names of every module imported anywhere in ``module`` (also inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["uprobe_exporter", *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_modules_named_exist() -> None:
    for module in (*PURE, *SHELL):
        assert (PACKAGE / f"{module}.py").is_file(), module


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_layer(module: str) -> None:
    names = imports_of(module)
    tops = {n.split(".")[0] for n in names}
    assert not tops & FORBIDDEN, f"{module} imports {tops & FORBIDDEN}"
    ours = {n.split(".")[1] for n in names if n.startswith("uprobe_exporter.")}
    assert not ours & set(SHELL), f"{module} imports the I/O shell: {ours & set(SHELL)}"
    allowed = {*PURE, *NATIVE, "errors"}
    assert ours <= allowed, f"{module} imports {ours - allowed}"


@pytest.mark.parametrize("module", PURE)
def test_pure_module_needs_no_file_api(module: str) -> None:
    tops = {n.split(".")[0] for n in imports_of(module)}
    assert not tops & (FILE_APIS - FILE_API_EXEMPT.get(module, set())), f"{module}: {tops & FILE_APIS}"
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls
    assert "exec" not in calls or module == "codegen"  # the one place that runs generated code


def test_importing_every_pure_module_loads_no_io_layer() -> None:
    """The same, transitively and at run time: a fresh interpreter imports only the pure modules."""
    code = (
        "import sys\n"
        f"for m in {PURE!r}: __import__('uprobe_exporter.' + m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}"
        f" or m in {['uprobe_exporter.' + s for s in SHELL]!r})\n"
        "print(' '.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                          cwd=PACKAGE.parent)
    assert done.stdout.strip() == ""
