"""formatfile: the captured ``format`` files of our events, and broken copies of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uprobe_exporter.errors import FormatError
from uprobe_exporter.kernel.formatfile import FieldKind, parse_format

KERNEL = Path(__file__).parent.parent / "fixtures" / "kernel"
FORMAT_FILES = sorted(p.name for p in KERNEL.glob("*.format"))


def read(name: str) -> str:
    return (KERNEL / name).read_text(encoding="utf-8")


def field_lines(text: str) -> list[tuple[str, int, int, bool]]:
    """(declaration, offset, size, signed) of each ``field:`` line, split by hand."""
    out = []
    for line in text.splitlines():
        if line.startswith("\tfield:"):
            parts = dict(p.split(":", 1) for p in line.strip().rstrip(";").split(";\t"))
            out.append((parts["field"], int(parts["offset"]), int(parts["size"]), parts["signed"] == "1"))
    return out


def test_fixture_set_is_present() -> None:
    assert {"work_entry.format", "work_return.format", "types_entry.format"} <= set(FORMAT_FILES)


@pytest.mark.parametrize("name", FORMAT_FILES)
def test_name_id_and_print_fmt(name: str) -> None:
    text = read(name)
    fmt = parse_format(text)
    assert fmt.name == name.removesuffix(".format")
    assert f"\nID: {fmt.id}\n" in text
    assert f"\nprint fmt: {fmt.print_fmt}\n" in text
    assert fmt.is_return == name.endswith("_return.format")


@pytest.mark.parametrize("name", FORMAT_FILES)
def test_every_field_line_becomes_a_field(name: str) -> None:
    text = read(name)
    fmt = parse_format(text)
    lines = field_lines(text)
    fields = [*fmt.common, *fmt.fields]
    assert len(fields) == len(lines)
    for f, (decl, offset, size, signed) in zip(fields, lines, strict=True):
        assert decl.split()[-1].startswith(f.name)
        assert (f.offset, f.size) == (offset, size)
        if f.kind is not FieldKind.ARRAY:
            assert f.signed == signed
    assert [f.name for f in fmt.common] == ["common_type", "common_flags", "common_preempt_count", "common_pid"]


@pytest.mark.parametrize("name", FORMAT_FILES)
def test_args_are_in_print_order(name: str) -> None:
    fmt = parse_format(read(name))
    printed = re.findall(r" (\w+)=", fmt.print_fmt.split('", ', 1)[0])
    assert [f.name for f in fmt.args] == printed
    assert not {f.name for f in fmt.args} & {"__probe_ip", "__probe_func", "__probe_ret_ip"}


def test_kinds_of_the_types_probe() -> None:
    fmt = parse_format(read("types_entry.format"))
    kinds = {f.name: f.kind for f in fmt.args}
    assert kinds == {"__comm": FieldKind.STRING, "__sp": FieldKind.INT, "x8": FieldKind.INT,
                     "u16": FieldKind.INT, "c": FieldKind.CHAR, "arr": FieldKind.ARRAY,
                     "bits": FieldKind.INT, "bad": FieldKind.STRING}
    arr = next(f for f in fmt.args if f.name == "arr")
    assert arr.count == arr.size  # u8 elements: "+0(%si):u8[4]"
    assert arr.count == fmt.print_fmt.count("REC->arr[")


def test_string_fields_are_data_loc() -> None:
    fmt = parse_format(read("work_entry.format"))
    strings = [f.name for f in fmt.args if f.kind is FieldKind.STRING]
    assert strings == ["__comm", "s"]
    assert all(f.size == 4 for f in fmt.args if f.kind is FieldKind.STRING)  # (len << 16) | offset


@pytest.mark.parametrize("drop", ["name: ", "ID: ", "print fmt: "])
def test_missing_header_line_is_a_start_up_error(drop: str) -> None:
    text = "\n".join(line for line in read("work_entry.format").splitlines() if not line.startswith(drop))
    with pytest.raises(FormatError) as info:
        parse_format(text)
    assert info.value.event == ("?" if drop == "name: " else "work_entry")
    assert f"has no {drop.rstrip(': ')} line" in str(info.value)
    assert info.value.exit_code == 2


def test_array_size_not_a_multiple_of_its_element_is_a_parse_error() -> None:
    text = read("types_entry.format").replace("u8 arr[];\toffset:32;\tsize:4;", "u16 arr[];\toffset:32;\tsize:3;")
    assert text != read("types_entry.format")
    with pytest.raises(FormatError) as info:
        parse_format(text)
    assert (info.value.event, info.value.field) == ("types_entry", "arr")
    assert str(info.value).startswith("event types_entry: cannot decode field 'arr' (u16 arr[], 3 bytes")
