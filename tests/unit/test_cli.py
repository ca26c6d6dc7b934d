"""The command line on real binaries: `symbols`, the built-in example, `--version`."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.helpers import ROOT, run_cli
from uprobe_exporter import __version__, _native


def objdump_offsets(binary: Path) -> dict[str, int]:
    """Function → file offset, as objdump itself computes it (``<work> (File Offset: 0x1199):``)."""
    out = subprocess.run(["objdump", "-d", "-F", str(binary)], capture_output=True, text=True, check=True).stdout
    return {m[1]: int(m[2], 16) for m in re.finditer(r"<(\w+)> \(File Offset: 0x([0-9a-f]+)\):", out)}


def test_symbols_lists_functions_with_their_file_offsets(build: Callable[..., Path]) -> None:
    binary = build("calls", "-no-pie", "-fno-pie")  # non-PIE: file offset != virtual address
    done = run_cli("symbols", str(binary), "*r*")
    assert done.returncode == 0, done.stderr
    listed = {line.split()[2]: int(line.split()[0], 16) for line in done.stdout.splitlines()}
    expected = objdump_offsets(binary)
    assert {"work", "recurse"} <= set(listed)
    assert all("r" in name for name in listed)
    for name in ("work", "recurse"):
        assert listed[name] == expected[name]


def test_symbols_of_a_library_by_name() -> None:
    done = run_cli("symbols", "libc.so.6", "getaddrinfo")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^0x[0-9a-f]+ +\d+ getaddrinfo  \(.+\)$", done.stdout, re.M)


def test_symbols_of_a_missing_binary_is_a_one_line_error() -> None:
    done = run_cli("symbols", "/no/such/file")
    assert done.returncode == 2
    assert done.stderr.strip() == ("uprobe-exporter: error: '/no/such/file' does not exist "
                                   "(looked for /no/such/file)")


def test_built_in_example_resolves_on_this_host() -> None:
    done = run_cli("check")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    assert [line.split()[0] for line in lines] == [
        "p:uprobe_exporter/readline_entry", "r:uprobe_exporter/readline_return",
        "p:uprobe_exporter/getaddrinfo_entry", "r:uprobe_exporter/getaddrinfo_return"]


def test_version_says_python_kernel_and_native_path() -> None:
    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"uprobe-exporter {__version__}"
    assert lines[1] == f"Python {platform.python_version()} ({sys.executable})"
    assert lines[2] == f"kernel {os.uname().release} ({os.uname().machine})"
    native = Path(_native.__file__ or "")
    assert lines[3] == f"native path: active ({native})"
    pure = run_cli("--version", env={**os.environ, "UPROBE_EXPORTER_PURE": "1"})
    assert pure.stdout.splitlines()[3] == "native path: off (switched off on purpose: UPROBE_EXPORTER_PURE=1)"


def test_example_prints_the_built_in_configuration() -> None:
    done = run_cli("example")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (ROOT / "config.example.toml").read_text(encoding="utf-8")


def test_symbols_without_a_match_says_so_and_suggests_close_names() -> None:
    done = run_cli("symbols", "/bin/bash", "readlinx")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("uprobe-exporter: error: no function of /usr/bin/bash matches 'readlinx'; "
                                  "close names: readline")
    assert len(done.stderr.splitlines()) == 1


def test_symbols_of_a_program_name_suggests_its_path_on_path() -> None:
    done = run_cli("symbols", "bash", env={**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"})
    assert done.returncode == 2
    assert done.stderr.strip().endswith("did you mean /usr/bin/bash (found on PATH)?"), done.stderr


def test_the_readmes_malloc_recipe_checks(tmp_path: Path) -> None:
    """The README's per-program malloc recipe is valid as written: comm and filter on the entry, comm alone on
    the return."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    recipe = readme.split("### Recipe: `malloc` of one program", 1)[1]
    block = re.search(r"```toml\n(.*?)```", recipe, re.S)
    assert block is not None
    config = tmp_path / "malloc.toml"
    config.write_text(block[1])
    done = run_cli("check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    filters = [line for line in done.stdout.splitlines() if line.startswith("# filter")]
    assert filters == ['# filter uprobe_exporter/malloc_entry: (__comm == "redis-server") && (size >= 65536)',
                       '# filter uprobe_exporter/malloc_return: __comm == "redis-server"']
