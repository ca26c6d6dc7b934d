"""The command line on real binaries: `symbols`, the built-in example, `--version`."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.helpers import run_cli
from uprobe_exporter import __version__


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


def test_version() -> None:
    done = run_cli("--version")
    assert done.stdout.strip() == f"uprobe-exporter {__version__}"
