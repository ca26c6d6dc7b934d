"""The two backends the differential tests compare (backend.py); the native one is built (CI compiles it)."""

from __future__ import annotations

from uprobe_exporter.backend import NATIVE, PYTHON, STATUS, Backend


def native() -> Backend:
    assert NATIVE is not None, f"the native twins are not there: {STATUS.describe()}"
    return NATIVE


def backend(is_native: bool) -> Backend:
    """The native backend, or the Python references."""
    return native() if is_native else PYTHON
