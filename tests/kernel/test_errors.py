"""Bad input: one clear located error per problem, all at once, the right exit code, nothing registered."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, ExporterProcess, build_config, read_jsonl, run_cli, toml_dumps, wait_for_lines
from uprobe_exporter.decode.unpack import UnpackPlan
from uprobe_exporter.errors import FormatError
from uprobe_exporter.kernel.formatfile import parse_format
from uprobe_exporter.kernel.session import remove_group
from uprobe_exporter.kernel.tracefs import Tracefs, read_text
from uprobe_exporter.plan.elf import load_elf


def config_file(tmp_path: Path, group: str, probes: list[dict[str, Any]], **sections: Any) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(toml_dumps(build_config(group, probes, tmp_path / "out.jsonl", **sections)))
    return path


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(("probe", "location", "text"), [
    ({"function": "wrok"}, "probes[0].function", "symbol 'wrok' in "),
    ({"function": "wrok"}, "probes[0].function", "did you mean 'work'"),
    ({"function": "work_calls"}, "probes[0].function", "is not a function but object"),
    ({"function": "work+0x4000"}, "probes[0].function", "past the end of the function"),
    ({"offset": 0}, "probes[0].offset", "outside every executable segment"),
    ({"function": "work", "binary": "/no/such/binary"}, "probes[0].binary", "does not exist"),
    ({"function": "work", "binary": "libnosuch.so.9"}, "probes[0].binary", "library 'libnosuch.so.9' not found"),
    ({"function": "strlen", "binary": "libc.so.6"}, "probes[0].function", "IFUNC resolver"),
    ({"function": "work", "args": {"x": "%di:string"}}, "probes[0].args.x", "must be read from memory"),
    ({"function": "work", "args": {"x": "$retval"}}, "probes[0].args.x", "only available in return_args"),
    ({"function": "work", "args": {"__x": "%di"}}, "probes[0].args.__x", "reserved"),
    ({"function": "work", "latency": True}, "probes[0].latency", "needs return = true"),
    ({"function": "work", "fucntion": "x"}, "probes[0].fucntion", "did you mean 'function'"),
    ({"function": "work", "offset": 4096}, "probes[0]", "exactly one of 'function'"),
    ({"function": "work", "name": "Bad-Name"}, "probes[0].name", "must match"),
    ({"function": "work+0x4", "return": True}, "probes[0].function", "must be at the function's first instruction"),
    ({"function": "work", "args": {"size": "%di:u64"}, "filter": "sise > 1"}, "probes[0].filter",
     "the entry event has no field 'sise'; did you mean 'size'?"),
    ({"function": "work", "return": True, "return_filter": "ret == 0"}, "probes[0].return_filter",
     "the return event has no field 'ret'"),
    ({"function": "work", "args": {"s": "+0(%si):strng"}}, "probes[0].args.s", "did you mean 'string'?"),
    ({"function": "work", "args": {"s": "+0(%si):string[2]"}}, "probes[0].args.s", "arrays of strings cannot be"),
    ({"function": "work", "comm": ["a-very-long-thread-name"]}, "probes[0].comm[0]", "write 'a-very-long-thr'"),
])
def test_bad_probe_is_a_located_one_line_error(
    build: Callable[..., Path], tmp_path: Path, probe: dict[str, Any], location: str, text: str,
) -> None:
    probe = {"name": "p", "binary": str(build("calls")), **probe}
    done = run_cli("check", "--config", str(config_file(tmp_path, "g", [probe])))
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    location = location.replace("probes[0]", f'probes[0] "{probe["name"]}"')  # errors name the probe
    assert lines[0].startswith(f"uprobe-exporter: error: {location}: ")
    assert text in lines[0]
    assert "Traceback" not in done.stderr


def test_every_problem_is_reported_at_once(build: Callable[..., Path], tmp_path: Path) -> None:
    binary = str(build("calls"))
    probes: list[dict[str, Any]] = [
        {"name": "a", "binary": binary, "function": "wrok"},
        {"name": "b", "binary": "/no/such", "function": "work"},
        {"name": "a", "binary": binary, "function": "work", "buckets": [1, 0.5]},
    ]
    done = run_cli("run", "--config", str(config_file(tmp_path, "g", probes, exporter={"buffer_size_kb": 1})))
    assert done.returncode == 2
    assert "5 configuration problems" in done.stderr
    for where in ("exporter.buffer_size_kb", 'probes[2] "a".name', 'probes[2] "a".buckets', 'probes[0] "a".function',
                  'probes[1] "b".binary'):
        assert f"\n  {where}: " in done.stderr


def test_resolution_problems_are_reported_together(build: Callable[..., Path], tmp_path: Path) -> None:
    binary = str(build("calls"))
    probes = [{"name": "a", "binary": binary, "function": "wrok"}, {"name": "b", "binary": "/no/such", "function": "w"}]
    done = run_cli("check", "--config", str(config_file(tmp_path, "g", probes)))
    assert done.returncode == 2
    assert 'probes[0] "a".function: symbol \'wrok\'' in done.stderr
    assert 'probes[1] "b".binary: \'/no/such\' does not exist' in done.stderr


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[exporter\n")
    done = run_cli("check", "--config", str(bad))
    assert done.returncode == 2
    assert "not valid TOML" in done.stderr
    done = run_cli("check", "--config", str(tmp_path / "missing.toml"))
    assert done.returncode == 2
    assert "cannot read configuration" in done.stderr


def test_usage_errors_exit_2() -> None:
    assert run_cli().returncode == 2
    assert run_cli("frobnicate").returncode == 2


def test_check_prints_commands_and_touches_nothing(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    binary = build("calls")
    before = [e for e in tracefs.read_uprobe_events() if e.group == group]  # other tests may run beside this one
    probe = {"name": "w", "binary": str(binary), "function": "work", "args": {"a": "%di:s32"}, "return": True,
             "filter": "a > 3"}
    done = run_cli("check", "--config", str(config_file(tmp_path, group, [probe])))
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stdout.splitlines() if not x.startswith("# cost ")]  # tests/kernel/test_costs.py
    assert lines[0].startswith(f"p:{group}/w_entry {binary}:0x")
    assert lines[0].endswith(" __comm=$comm __sp=%sp:x64 a=%di:s32")
    assert lines[1] == f"# filter {group}/w_entry: a > 3"
    assert lines[2].startswith(f"r:{group}/w_return {binary}:0x")
    assert [e for e in tracefs.read_uprobe_events() if e.group == group] == before == []
    assert not tracefs.instance(group).exists()


def test_kernel_refusal_shows_error_log_and_removes_what_was_registered(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    binary = str(build("calls"))
    probes: list[dict[str, Any]] = [
        {"name": "good", "binary": binary, "function": "work", "return": True},
        {"name": "bad", "binary": binary, "function": "work", "args": {"x": "%di:b40@2/32"}},
    ]
    done = run_cli("run", "--config", str(config_file(tmp_path, group, probes)))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith('uprobe-exporter: error: probes[1] "bad": the kernel refused a uprobe_events command')
    assert f"p:{group}/bad_entry" in lines[0]
    assert "trace_uprobe: error: Invalid bitfield" in done.stderr
    assert lines[-1].strip() == "^"
    assert [e for e in tracefs.read_uprobe_events() if e.group == group] == []
    assert not tracefs.instance(group).exists()


def test_run_reports_a_bad_filter_field_before_registering_anything(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    probe = {"name": "w", "binary": str(build("calls")), "function": "work", "args": {"a": "%di:s32"},
             "filter": "a > 1 && pid == 3"}
    done = run_cli("run", "--config", str(config_file(tmp_path, group, [probe])))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("uprobe-exporter: error: probes[0] \"w\".filter: the entry event has no field "
                                  "'pid'; did you mean common_pid (the thread id")
    assert [e for e in tracefs.read_uprobe_events() if e.group == group] == []
    assert not tracefs.instance(group).exists()


def test_kernel_refused_filter_names_the_key(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path,
) -> None:
    # The fields are known before the kernel is touched; what only the kernel checks (a string compared
    # without quotes) is refused by it, with its error_log.
    probe = {"name": "w", "binary": str(build("calls")), "function": "work", "args": {"s": "+0(%si):string"},
             "filter": "s == bare"}
    done = run_cli("run", "--config", str(config_file(tmp_path, group, [probe])))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        f'uprobe-exporter: error: probes[0] "w".filter: the kernel refused the filter of {group}/w_entry')
    assert "did you forget quotes" in done.stderr
    assert [e for e in tracefs.read_uprobe_events() if e.group == group] == []
    assert not tracefs.instance(group).exists()


def test_return_probe_inside_a_function_is_refused(build: Callable[..., Path], tmp_path: Path) -> None:
    """A uretprobe there would replace whatever the stack holds with the trampoline: crash the target."""
    binary = build("calls")
    start = load_elf(binary).resolve("work")
    probe = {"name": "p", "binary": str(binary), "offset": start + 4, "return": True}
    done = run_cli("check", "--config", str(config_file(tmp_path, "g", [probe])))
    assert done.returncode == 2
    assert done.stderr.strip() == (f'uprobe-exporter: error: probes[0] "p".offset: {start + 4:#x} is work+0x4: a '
                                   f"return probe must be at a function's first instruction (work is at {start:#x})")
    at_start = {**probe, "offset": start}
    assert run_cli("check", "--config", str(config_file(tmp_path, "g", [at_start]))).returncode == 0


def test_an_elf_header_followed_by_garbage_is_a_one_line_error(build: Callable[..., Path], tmp_path: Path) -> None:
    """It was a pyelftools ValueError traceback (exit 1)."""
    garbage = tmp_path / "garbage"
    garbage.write_bytes(build("calls").read_bytes()[:64] + random.Random(1).randbytes(100_000))
    garbage.chmod(0o755)
    probe = {"name": "p", "binary": str(garbage), "function": "work"}
    for argv in (("check", "--config", str(config_file(tmp_path, "g", [probe]))), ("symbols", str(garbage))):
        done = run_cli(*argv)
        assert done.returncode == 2, done.stderr
        lines = error_lines(done.stderr)
        assert len(lines) == 1, done.stderr
        prefix = "uprobe-exporter: error: " + ("probes[0] \"p\".function: " if argv[0] == "check" else "")
        assert lines[0].startswith(f"{prefix}{garbage} is not a valid ELF file ("), lines[0]


@pytest.mark.parametrize("command", ["run", "check", "cleanup"])
def test_a_configuration_that_is_not_utf8_is_a_one_line_error(command: str, tmp_path: Path) -> None:
    """It was a UnicodeDecodeError traceback."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('[exporter]\ngroup = "caf\xe9"\n'.encode("latin-1"))
    done = run_cli(command, "--config", str(path))
    assert done.returncode == 2, done.stderr
    assert error_lines(done.stderr) == [
        f"uprobe-exporter: error: {path}: not UTF-8 (byte 0xe9 at line 2, offset 23); save the configuration as UTF-8"]


def test_values_with_control_characters_are_quoted_into_one_line(build: Callable[..., Path], tmp_path: Path) -> None:
    """A raw newline in a value made one problem two lines (the second could pass for another error)."""
    forged = "x\nuprobe-exporter: error: forged"
    probes: list[dict[str, Any]] = [
        {"name": "p", "binary": str(build("calls")), "function": "work", "args": {"a\tb": "%di\n-:uprobes/x"}},
        {"name": "q", "binary": f"/no/such\n{forged}", "function": "work"},
        {"name": "r", "binary": str(build("calls")), "function": "work\x1b[31m"},
    ]
    path = config_file(tmp_path, "g", probes, exporter={"group": forged, "instance": "a\u2028b"})
    path.write_text(path.read_text().replace("{ a\tb = ", '{ "a\\tb" = '))  # toml_dumps leaves keys bare
    done = run_cli("check", "--config", str(path))
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert lines[:-1] == [
        "uprobe-exporter: error: 6 configuration problems:",
        "  exporter.group: 'x\\nuprobe-exporter: error: forged' must be a C identifier of at most 63 characters",
        "  exporter.instance: 'a\\u2028b' must be a plain directory name ([A-Za-z0-9_.-])",
        "  probes[0] \"p\".args.a\\tb: argument names must be C identifiers of at most 31 characters",
        "  probes[0] \"p\".args.a\\tb: '%di\\n-:uprobes/x' must be non-empty, without spaces or '#'",
        "  probes[1] \"q\".binary: '/no/such\\nx\\nuprobe-exporter: error: forged' does not exist (looked for "
        "/no/such\\nx\\nuprobe-exporter: error: forged)",
    ]
    assert lines[-1].startswith("  probes[2] \"r\".function: symbol 'work\\x1b[31m' in ")
    assert lines[-1].endswith(" not found; did you mean 'work'?")


# The kernel's own format of an event, with argument `a` made 3 bytes wide: a field the raw reader cannot
# unpack (no fetcharg type gives one on this kernel; the text reader parses its "%d" all the same).
UNDECODABLE = """
import sys
from dataclasses import replace
from uprobe_exporter import cli
from uprobe_exporter.kernel import session
real = session.parse_format
def parse_format(text):
    fmt = real(text)
    return replace(fmt, fields=tuple(replace(f, size=3, type="u24") if f.name == "a" else f for f in fmt.fields))
session.parse_format = parse_format
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("reader", ["raw", "text"])
def test_a_format_the_raw_reader_cannot_decode_is_refused_at_start_and_text_reads_it(
    build: Callable[..., Path], tracefs: Tracefs, group: str, tmp_path: Path, reader: str,
) -> None:
    """Raw: one line naming the event and the field and suggesting the text reader, exit 2, nothing left
    registered. Text: what that line promises: the same probes run, every call recorded with its value."""
    binary = build("calls")
    probe = {"name": "w", "binary": str(binary), "function": "work", "args": {"a": "%di:s32"}}
    path = config_file(tmp_path, group, [probe], exporter={"reader": reader})
    argv = [sys.executable, "-c", UNDECODABLE, "run", "--config", str(path)]
    if reader == "raw":
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
        assert done.returncode == 2, done.stderr
        assert [line for line in done.stderr.splitlines() if line.startswith("uprobe-exporter: error:")] == [
            "uprobe-exporter: error: event w_entry: the raw reader cannot decode field 'a' (u24, 3 bytes); "
            'set [exporter] reader = "text" in the configuration (the text reader decodes it)']
        assert "Traceback" not in done.stderr
    else:
        with ExporterProcess(path, argv=argv) as exporter:
            exporter.wait_ready()
            ran = subprocess.run([binary, "2", "5", "1"], capture_output=True, check=True)
            calls = [json.loads(line) for line in ran.stdout.decode().splitlines()]
            calls = [c for c in calls if c["fn"] == "work"]
            wait_for_lines(tmp_path / "out.jsonl", len(calls))
            rc, _ = exporter.stop()
        assert rc == 0, exporter.stderr
        records = read_jsonl(tmp_path / "out.jsonl")
        assert Counter((r["tid"], r["args"]["a"]) for r in records) == Counter((c["tid"], c["a"]) for c in calls)
    assert [e for e in tracefs.read_uprobe_events() if e.group == group] == []
    assert not tracefs.instance(group).exists()


def test_the_kernels_format_of_an_array_of_strings_is_refused_by_the_raw_decoder(
    build: Callable[..., Path], tracefs: Tracefs, group: str,
) -> None:
    """The configuration refuses `string[N]` (above); registered anyway, its real format
    (``__data_loc char[][2]``, 8 bytes) is refused by the raw decoder, which read the first string only."""
    binary = build("calls")
    offset = load_elf(binary).resolve("work")
    tracefs.write_uprobe_events(f"p:{group}/strings {binary}:{offset:#x} s=+0(%si):string[2]")
    try:
        fmt = parse_format(read_text(tracefs.root / "events" / group / "strings" / "format"))
        assert [(f.type, f.size) for f in fmt.args] == [("char[][2]", 8)]
        with pytest.raises(FormatError) as info:
            UnpackPlan.of(fmt)
        assert (info.value.event, info.value.field, info.value.exit_code) == ("strings", "s", 2)
        assert str(info.value) == ("event strings: the raw reader cannot decode field 's' (char[][2], 8 bytes: an "
                                   "array of strings); read each string with its own argument")
    finally:
        remove_group(tracefs, group)
