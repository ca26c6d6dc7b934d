"""codegen: generated functions are registered in linecache, so tracebacks show their source lines."""

from __future__ import annotations

import traceback

import pytest

from tests.unit.test_traceline import KERNEL
from uprobe_exporter.decode.codegen import compile_function
from uprobe_exporter.decode.unpack import RecordBuilder
from uprobe_exporter.kernel.formatfile import parse_format


def test_a_traceback_through_generated_code_shows_its_line() -> None:
    source = "def f(x):\n    y = x + 1\n    return 10 // (y - y)  # divide by zero here\n"
    f = compile_function(source, "f", "test function f", {})
    with pytest.raises(ZeroDivisionError) as info:
        f(1)
    text = "".join(traceback.format_exception(info.value))
    assert 'File "<test function f>", line 3' in text
    assert "return 10 // (y - y)  # divide by zero here" in text


def test_a_record_builder_shows_its_source_in_a_traceback() -> None:
    """A record shorter than its format: struct.error, with the builder's unpack line in the traceback."""
    fmt = parse_format((KERNEL / "recurse_entry.format").read_text(encoding="utf-8"))
    builder = RecordBuilder.compile(fmt)
    with pytest.raises(Exception) as info:  # noqa: PT011 (struct.error has no narrower base)
        builder.build(b"\0" * 4, 0, 1, 0)
    text = "".join(traceback.format_exception(info.value))
    assert f"<record builder {fmt.name}>" in text and "_unpack(p, o)" in text
