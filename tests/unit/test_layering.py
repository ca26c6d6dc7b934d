"""Layering, derived from the packages (STYLE.md §1, §10): data flows one way through the stages that
``uprobe_exporter.STAGES`` lists, and a module whose docstring calls it pure never does I/O."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import uprobe_exporter

PACKAGE = Path(uprobe_exporter.__file__).resolve().parent
STAGES: tuple[str, ...] = uprobe_exporter.STAGES
BASE = {"errors", "backend"}  # root modules every stage may use (backend: for its type, passed down)
FORBIDDEN = {"asyncio", "aiofiles", "subprocess", "socket", "selectors"}  # (logging loads threading)
FILE_APIS = {"os", "io", "shutil", "pathlib", "tempfile", "fcntl", "mmap"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__init__.py"}


def is_pure(module: str) -> bool:
    """Its docstring's first line says so ("Pure: ...", "Pure parser of ...", "pure data")."""
    doc = ast.get_docstring(ast.parse(MODULES[module].read_text(encoding="utf-8"))) or ""
    return "pure" in doc.split("\n", 1)[0].lower().replace(",", " ").replace(":", " ").split()


PURE = sorted(m for m in MODULES if is_pure(m))


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The nodes under ``if TYPE_CHECKING:``: imports for annotations, never run."""
    skip: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                skip.update(ast.walk(child))
    return skip


def imports_of(module: str, at_run_time: bool = False) -> set[str]:
    """Absolute names of every module imported anywhere in ``module`` (also inside functions; with
    ``at_run_time``, not those under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    skip = _type_checking_only(tree) if at_run_time else set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["uprobe_exporter", *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def ours(module: str, at_run_time: bool = False) -> set[str]:
    """Our modules it imports, as ``stage.module`` or a root module's name."""
    found = set()
    for name in imports_of(module, at_run_time):
        parts = name.split(".")
        if parts[0] != "uprobe_exporter" or len(parts) < 2:
            continue
        key = ".".join(parts[1:3]) if parts[1] in STAGES else parts[1]
        if key in MODULES or key in BASE:
            found.add(key)
    return found


def test_every_package_is_a_stage() -> None:
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == set(STAGES)


def test_only_the_backend_imports_the_extension() -> None:
    """The backend is chosen in one place (STYLE.md §15): no other module imports ``_native`` (for its
    types only, under ``if TYPE_CHECKING:``, is allowed)."""
    importers = {m for m in MODULES
                 if any(n.split(".")[:2] == ["uprobe_exporter", "_native"] for n in imports_of(m, at_run_time=True))}
    assert importers == {"backend"}


def test_there_are_pure_modules_in_the_stages_that_decode_and_render() -> None:
    for stage in ("decode", "pipeline"):
        assert [m for m in PURE if m.startswith(stage + ".")], stage


def after_stage(root: str) -> int:
    """The latest stage a root module imports at run time (-1: none): only a stage after it may import
    that module at run time (``backend`` imports the twins of decode and pipeline: run may use it)."""
    return max((STAGES.index(n.split(".")[0]) for n in ours(root, at_run_time=True) if "." in n), default=-1)


@pytest.mark.parametrize("module", [m for m in MODULES if "." in m])
def test_data_flows_one_way(module: str) -> None:
    """A stage's module imports its own stage, earlier stages and the base, never a later stage or the CLI;
    a base module only from a stage after every stage it imports itself (for types alone: from that stage)."""
    rank = STAGES.index(module.split(".", maxsplit=1)[0])
    at_run_time = ours(module, at_run_time=True)
    for name in ours(module):
        if "." in name:
            assert STAGES.index(name.split(".")[0]) <= rank, f"{module} imports the later stage's {name}"
            continue
        assert name in BASE, f"{module} imports the root's {name}"
        if name in at_run_time:
            assert after_stage(name) < rank, f"{module} imports {name}, which imports a stage as late as its own"
        else:
            assert after_stage(name) <= rank, f"{module} imports {name}'s types from a stage before its imports"


def test_the_backend_sits_after_the_stages_whose_twins_it_chooses() -> None:
    assert STAGES[after_stage("backend")] == "pipeline" and after_stage("errors") == -1


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_only_pure_modules(module: str) -> None:
    names = imports_of(module)
    tops = {n.split(".")[0] for n in names}
    assert not tops & FORBIDDEN, f"{module} imports {tops & FORBIDDEN}"
    impure = {m for m in ours(module) if m not in BASE and m not in PURE}
    assert not impure, f"{module} imports the I/O shell: {impure}"


@pytest.mark.parametrize("module", PURE)
def test_pure_module_needs_no_file_api(module: str) -> None:
    tops = {n.split(".")[0] for n in imports_of(module)}
    assert not tops & FILE_APIS, f"{module}: {tops & FILE_APIS}"
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls
    assert "exec" not in calls or module == "decode.codegen"  # the one place that runs generated code


def test_importing_every_pure_module_loads_no_io_layer() -> None:
    """The same, transitively and at run time: a fresh interpreter imports only the pure modules."""
    shell = sorted(f"uprobe_exporter.{m}" for m in MODULES if m not in PURE and m not in BASE)
    code = (
        "import sys\n"
        f"for m in {PURE!r}: __import__('uprobe_exporter.' + m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r} or m in {shell!r})\n"
        "print(' '.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                          cwd=PACKAGE.parent)
    assert done.stdout.strip() == ""
