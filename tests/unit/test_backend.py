"""backend.py chooses the twins of every stage in one place: the native ones where the extension is built
(CI builds it), the Python references everywhere with UPROBE_EXPORTER_PURE=1, which then does not even
import the extension."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from tests.helpers import ROOT
from uprobe_exporter.backend import CHOSEN, NATIVE, PYTHON, STATUS
from uprobe_exporter.nativestatus import PURE_ENV


def test_the_native_twins_are_chosen_where_built() -> None:
    assert NATIVE is not None and CHOSEN is NATIVE and STATUS.active, STATUS.describe()
    assert NATIVE.emit_plan is not None and PYTHON.emit_plan is None
    twins = dataclasses.asdict(NATIVE)  # every stage has its own twin in each backend
    references = dataclasses.asdict(PYTHON)
    assert all(twins[k] is not references[k] for k in twins if k not in ("name",)), twins


def test_pure_takes_the_python_references_and_never_imports_the_extension() -> None:
    code = ("import sys\n"
            "import uprobe_exporter.backend as b\n"
            "import uprobe_exporter.run.daemon\n"
            "loaded = 'uprobe_exporter._native' in sys.modules\n"
            "print(b.CHOSEN is b.PYTHON, b.NATIVE is None, loaded, b.STATUS.active)\n")
    for value, pure in (("1", True), ("0", False), ("", False)):
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, PURE_ENV: value},
                              capture_output=True, text=True, check=True, timeout=60)
        assert done.stdout.split() == [str(pure), str(pure), str(not pure), str(not pure)], (value, done.stdout)
