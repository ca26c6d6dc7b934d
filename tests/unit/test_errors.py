"""Errors at the boundary: OSError mapped by one helper, formats we cannot decode refused at start-up,
per-record anomalies counted (never raised), and no catch-all outside the CLI."""

from __future__ import annotations

import ast
import errno
import re
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.test_pipeline import lines, pipeline
from tests.unit.test_rawemit import raw_pipeline
from tests.unit.test_traceline import KERNEL
from uprobe_exporter.backend import CHOSEN
from uprobe_exporter.decode.rawpage import PageLayout
from uprobe_exporter.decode.traceline import TextParser
from uprobe_exporter.decode.unpack import UnpackPlan
from uprobe_exporter.errors import (
    RAW_READER_FIX,
    ConfigError,
    FormatError,
    ResolveError,
    TracefsError,
    UprobeExporterError,
    mapped_oserror,
    os_errors,
)
from uprobe_exporter.kernel.formatfile import EventFormat, FieldKind, parse_format
from uprobe_exporter.kernel.tracefs import read_text
from uprobe_exporter.pipeline.render import Renderer

PACKAGE = Path(__file__).parent.parent.parent / "uprobe_exporter"


def work_entry() -> EventFormat:
    return parse_format((KERNEL / "work_entry.format").read_text(encoding="utf-8"))


# --- one helper maps OSError -------------------------------------------------------------------------

def test_os_errors_keeps_what_was_tried_the_path_the_errno_text_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no\nsuch"  # a path echoed in a message stays on one line
    with pytest.raises(TracefsError) as info, os_errors(TracefsError, f"cannot read {missing}", path=missing,
                                                        fix={errno.ENOENT: "create it", errno.EACCES: "run as root"}):
        missing.read_bytes()
    assert str(info.value) == f"cannot read {tmp_path}/no\\nsuch: No such file or directory; create it"
    assert info.value.path == str(missing)
    assert isinstance(info.value.__cause__, FileNotFoundError)


@pytest.mark.parametrize(("cls", "attribute"), [(TracefsError, "path"), (ResolveError, "binary"),
                                                 (ConfigError, "problems"), (UprobeExporterError, None)])
def test_every_class_keeps_the_path_in_its_own_attribute(
    tmp_path: Path, cls: type[UprobeExporterError], attribute: str | None,
) -> None:
    try:
        (tmp_path / "x").read_bytes()
    except OSError as exc:
        err = mapped_oserror(exc, cls, f"cannot read {tmp_path / 'x'}", path=tmp_path / "x", fix="give a file")
    assert type(err) is cls
    assert str(err) == f"cannot read {tmp_path}/x: No such file or directory; give a file"
    if attribute == "problems":
        assert err.problems == (str(err),)  # type: ignore[attr-defined]
    elif attribute is not None:
        assert getattr(err, attribute) == str(tmp_path / "x")


def test_a_tracefs_file_that_cannot_be_read_is_a_tracefs_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TracefsError, match=r"^cannot read .*/events/g/e/format: No such file or directory$"):
        read_text(tmp_path / "events" / "g" / "e" / "format")


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py"))]


def _raised(node: ast.Raise) -> str:
    call = node.exc
    return call.func.id if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) else ""


def test_no_module_words_an_oserror_into_our_errors_itself() -> None:
    """``strerror`` in a ``raise`` outside errors.py is a second boundary (logging it is fine). The one
    exception: the kernel's refusal of a command, which carries the command and error_log instead."""
    found = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path, tree in _modules() if path.name != "errors.py"
             for node in ast.walk(tree) if isinstance(node, ast.Raise) and _raised(node) != "KernelRefusedError"
             for sub in ast.walk(node) if isinstance(sub, ast.Attribute) and sub.attr == "strerror"]
    assert found == []


def test_no_catch_all_outside_the_cli() -> None:
    """No ``except:`` or ``except Exception`` anywhere (the CLI maps our errors by class and lets a bug
    keep its traceback); ``except BaseException`` only to clean up and re-raise."""
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ExceptHandler):
                continue
            names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)} if node.type else {"<bare>"}
            reraises = isinstance(node.body[-1], ast.Raise) and node.body[-1].exc is None
            if names & {"<bare>", "Exception"} or ("BaseException" in names and not reraises):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


# --- a format we cannot decode is a start-up error ----------------------------------------------------

def _with_arg(fmt: EventFormat, name: str, **changes: object) -> EventFormat:
    return replace(fmt, fields=tuple(replace(f, **changes) if f.name == name else f for f in fmt.fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "what", "fix"), [
    ({"size": 3, "type": "u24"}, "u24, 3 bytes", RAW_READER_FIX),
    ({"size": 8, "type": "char[][2]", "kind": FieldKind.STRING}, "char[][2], 8 bytes: an array of strings",
     "read each string with its own argument"),
    ({"size": 0, "type": "u32", "kind": FieldKind.ARRAY, "elem_size": 4}, "u32[], an empty array", RAW_READER_FIX),
    ({"offset": 24}, "at offset 24, overlapping the field before it", RAW_READER_FIX),
])
def test_a_field_the_raw_reader_cannot_decode_is_a_one_line_start_up_error(
    changes: dict[str, object], what: str, fix: str,
) -> None:
    fmt = _with_arg(work_entry(), "a", **changes)
    for start in (UnpackPlan.of, lambda f: raw_pipeline(Renderer(0), CHOSEN).emitters([f])):  # daemon._reader's
        with pytest.raises(FormatError) as info:
            start(fmt)
        assert (info.value.event, info.value.field, info.value.exit_code) == ("work_entry", "a", 2)
        assert str(info.value) == f"event work_entry: the raw reader cannot decode field 'a' ({what}); {fix}"
    assert 'reader = "text"' in RAW_READER_FIX


def test_the_text_reader_decodes_what_the_raw_reader_refuses() -> None:
    """What RAW_READER_FIX promises: the text reader compiles and parses that event."""
    fmt = _with_arg(work_entry(), "a", size=3, type="u24")
    line = next(x for x in lines() if "work_entry" in x)
    records, errors = TextParser.for_formats([fmt]).parse_lines([line], final=True)
    assert errors == [] and len(records) == 1


def test_a_header_page_we_cannot_read_is_a_start_up_error() -> None:
    text = (KERNEL / "header_page").read_text(encoding="utf-8")
    assert PageLayout.parse(text).page_size > 0
    with pytest.raises(FormatError) as info:
        PageLayout.parse(re.sub(r"\tfield: ?local_t commit;[^\n]*\n", "", text))
    assert (info.value.event, info.value.field) == ("header_page", "commit")
    assert str(info.value).endswith(RAW_READER_FIX)


# --- per-record anomalies are counters ----------------------------------------------------------------

@pytest.mark.parametrize("value", ["123456789012345678901234567890", "99999999999", "-99999999999"])
def test_a_number_no_kernel_prints_is_counted_not_raised(value: str) -> None:
    """a=... of an s32: more digits than 32 bits print is a corrupted line, counted; it once reached
    orjson (more than 64 bits: TypeError out of the reader) or was reported as a value out of range."""
    p = pipeline(Renderer(0))
    good = next(x for x in lines() if "work_entry" in x)
    bad = re.sub(r" a=-?\d+", f" a={value}", good)
    assert bad != good
    out = p.process([bad, good], final=True)
    assert out is not None and out[1] == 1
    assert sum(p.statistics().parse_errors.values()) == 1


def go_format() -> EventFormat:
    head = (KERNEL / "work_entry.format").read_text(encoding="utf-8").split("\n\n")[0]
    return parse_format(head.replace("name: work_entry", "name: go_entry") + (
        "\n\n\tfield:unsigned long __probe_ip;\toffset:8;\tsize:8;\tsigned:0;\n"
        "\tfield:u64 name[];\toffset:16;\tsize:16;\tsigned:0;\n"
        "\tfield:s64 __len_name;\toffset:32;\tsize:8;\tsigned:1;\n\n"
        'print fmt: "(%lx) name={0x%Lx,0x%Lx} __len_name=%Ld", REC->__probe_ip\n'))


@pytest.mark.parametrize(("words", "ok"), [("0x6f6c6c6568,0x0", True), ("-0x1,0x0", False),
                                           ("0x1ffffffffffffffff,0x0", False)])
def test_a_go_string_whose_words_are_not_u64_is_counted_not_raised(words: str, ok: bool) -> None:
    """A Go string's words were packed with struct: a word out of u64 range raised struct.error."""
    line = f"            bash-1234    (   1234) [001] ..... 1061.676986: go_entry: (0x401000) name={{{words}}} " \
           "__len_name=5"
    records, errors = TextParser.for_formats([go_format()]).parse_lines([line], final=True)
    if ok:
        assert [r.args for r in records] == [{"name": "hello"}] and errors == []  # type: ignore[union-attr]
    else:
        assert records == [] and [e.reason for e in errors] == ["value"]
