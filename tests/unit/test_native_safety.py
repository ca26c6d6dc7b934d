"""The native twins own their state: the module is defined once with multi-phase init, its types cannot be
used half-built or subclassed into a crash, and each C source says which Python twin it mirrors.

Misuse that used to crash runs in a subprocess, so a segfault fails the test instead of killing pytest."""

from __future__ import annotations

import importlib.util
import re
import struct
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.twins import native
from uprobe_exporter import _native
from uprobe_exporter.backend import PYTHON

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "uprobe_exporter" / "native"


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter on this tree; a crash (a signal) fails the calling test."""
    done = subprocess.run([sys.executable, "-X", "dev", "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode >= 0, f"crashed with signal {-done.returncode}: {done.stderr[-2000:]}"
    assert done.returncode == 0, done.stderr[-2000:]
    return done


# ---- the module ------------------------------------------------------------------------------------------

def test_the_module_uses_multi_phase_init() -> None:
    """PEP 489: every execution makes a new module object (single-phase init hands back the cached one)."""
    spec = importlib.util.find_spec("uprobe_exporter._native")
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh is not _native
    assert fresh.Pairing is _native.Pairing  # static types, readied once
    assert fresh.__name__ == "uprobe_exporter._native"
    assert sorted(n for n in dir(fresh) if not n.startswith("_")) == sorted(
        n for n in dir(_native) if not n.startswith("_"))


def test_the_module_survives_reload_and_reimport() -> None:
    run_isolated("""
        import importlib, sys
        import uprobe_exporter._native as a
        importlib.reload(a)
        del sys.modules["uprobe_exporter._native"]
        import uprobe_exporter._native as b
        assert b is not a and b.Pairing is a.Pairing
        b.Pairing(tuple).enter("p", 1, 0, 5)
    """)


def test_free_threaded_builds_do_not_trip_warnings_as_errors() -> None:
    """3.13t is not a target: importing the extension there re-enables the GIL with a RuntimeWarning,
    which the suite's filterwarnings lets through (and only that one)."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    filters = options["filterwarnings"]
    assert filters[0] == "error"
    (gil,) = [f for f in filters if "GIL" in f]
    action, message, category = gil.split(":")
    assert action == "ignore" and category == "RuntimeWarning"
    assert re.match(message, "The global interpreter lock (GIL) has been enabled to load module "
                    "'uprobe_exporter._native', which has not declared that it can run safely without the GIL.")
    module_c = (NATIVE / "module.c").read_text()
    assert "Py_mod_gil, Py_MOD_GIL_USED" in module_c and "#ifdef Py_GIL_DISABLED" in module_c


def test_each_c_source_names_its_python_twin_and_no_stale_file_names() -> None:
    module_c = (NATIVE / "module.c").read_text()
    header = module_c.split("*/", 1)[0]
    sources = sorted(p.name for p in NATIVE.glob("*.c"))
    built = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"][0]["sources"]
    assert sorted(Path(s).name for s in built) == sources, "pyproject builds every source in native/"
    for name in sources:
        if name != "module.c":
            assert re.search(rf"^ \*\s+{re.escape(name)}\s", header, re.M), f"module.c lists {name} with its twin"
    for twin in re.findall(r"(\w+(?:/\w+)*\.py)", header):
        assert (ROOT / "uprobe_exporter" / twin).is_file(), f"module.c names a missing twin {twin}"
    stale = re.compile(r"\b_(walk|native|pairing|merge|lines|histogram)\.c\b")
    for path in [*NATIVE.glob("*.[ch]"), ROOT / "uprobe_exporter" / "_native.pyi"]:
        text = path.read_text()
        assert not stale.search(text), f"{path.name} names a source by its old name: {stale.search(text)}"
        assert "PyInit__native" not in text or path.name == "module.c"


# ---- Pairing: made whole in tp_new, final, collected through its entries ----------------------------------

def test_pairing_misuse_raises_and_never_crashes() -> None:
    run_isolated("""
        from uprobe_exporter._native import Pairing
        from uprobe_exporter.pipeline.pairing import Frame

        def raises(kind, f):
            try:
                f()
            except kind:
                return
            raise AssertionError(f"{f} did not raise {kind}")

        raises(TypeError, lambda: Pairing.__new__(Pairing))  # no frame type: no half-built Pairing
        raises(TypeError, lambda: Pairing.__new__(Pairing, 5))
        raises(ValueError, lambda: Pairing(int))  # frames are tuples
        raises(ValueError, lambda: Pairing(Frame, 10, 0))
        raises(TypeError, lambda: type("Sub", (Pairing,), {}))  # final: not a base type
        p = Pairing.__new__(Pairing, Frame)  # __new__ alone makes a whole Pairing
        p.enter("p", 1, 0, 5, ("x",))
        assert p.leave("p", 1, 0) == Frame(0, 5, ("x",))
        p.enter("p", 1, 0, 6)
        p.__init__(Frame, 1, 1)  # __init__ again changes nothing
        p.__init__()
        assert (p.max_pending, p.max_depth, p.pending) == (65536, 4096, 1)
        assert p.leave("p", 1, 0) == Frame(0, 6, None)
        raises(TypeError, lambda: p.enter(1, 1, 0, 5))  # the probe is a name
        raises(TypeError, lambda: p.enter("p", 1, 0))
        raises(OverflowError, lambda: p.enter("p", 1, -1, 5))  # sp is unsigned
        raises(TypeError, lambda: p.leave_matching("p", 1, ["x"]))
        p.enter("p", 2, 0, 5, "not a tuple")
        raises(ValueError, lambda: p.leave_matching("p", 2, ("x",)))
        assert p.stacks[("p", 2)] == [Frame(0, 5, "not a tuple")]
        assert p.counts()[0] == {"p": 1}
    """)


def test_a_cycle_through_a_pairing_entry_is_collected() -> None:
    import gc
    import weakref

    from uprobe_exporter.pipeline.pairing import Frame

    class Holder:
        pairing: object = None

    h = Holder()
    p = _native.Pairing(Frame)
    h.pairing = p
    p.enter("p", 1, 0, 5, (h,))  # p -> its entry -> h -> p
    assert gc.is_tracked(p) and (h,) in gc.get_referents(p)
    gone = weakref.ref(h)
    del h, p
    gc.collect()
    assert gone() is None


def test_a_finalizer_that_uses_the_pairing_during_collection_finds_it_whole() -> None:
    run_isolated("""
        import gc
        from uprobe_exporter._native import Pairing
        seen = []

        class Holder:
            def __del__(self):
                p = self.pairing
                p.enter("q", 9, 0, 1)  # runs while the cycle is collected
                seen.append((p.pending, p.leave("q", 9, 0), p.counts()[1], sorted(p.threads())))

        for _ in range(50):
            p = Pairing(tuple)
            h = Holder()
            h.pairing = p
            for tid in range(20):
                p.enter("p", tid, 0, tid, (h,))
            del h, p
            gc.collect()
        assert len(seen) == 50, seen
    """)


def test_finalizers_of_released_entries_that_use_the_pairing_find_it_whole() -> None:
    """An entry's extra whose finalizer calls the Pairing letting go of it (unwound, past max_depth, past
    max_pending, at a return, at a thread's exit): every extra is released once the operation is done, so
    the finalizer never frees a stack the operation still uses (the old code read freed memory here: a
    heap-use-after-free under ASan, a crash without)."""
    run_isolated("""
        import gc
        from uprobe_exporter._native import Pairing

        class Reenter:  # an entry's extra whose finalizer uses the pairing that is letting go of it
            def __init__(self, p, tid):
                self.p, self.tid = p, tid
            def __del__(self):
                p = self.p
                p.evict_thread(self.tid)  # frees the thread's stacks
                p.enter("x", self.tid, 0, 1)
                p.drop_empty()
                p.counts(), p.stacks, p.threads()

        def extra(p, tid):
            return (Reenter(p, tid),)

        for round_ in range(20):
            p = Pairing(tuple, 4, 2)
            p.enter("p", 1, 100, 1, extra(p, 1))
            p.enter("p", 1, 200, 2, extra(p, 1))      # unwinds the first: its finalizer evicts thread 1
            p.enter("p", 2, 0, 1, extra(p, 2))
            p.enter("p", 2, 0, 2, extra(p, 2))
            p.enter("p", 2, 0, 3, extra(p, 2))        # past max_depth: the oldest goes
            for tid in range(3, 9):
                p.enter("q", tid, 0, tid, extra(p, tid))  # past max_pending: the least recent thread's oldest goes
            p.enter("p", 9, 100, 1, extra(p, 9))
            p.enter("p", 9, 50, 2, extra(p, 9))
            p.leave("p", 9, 108)                       # unwinds the one at 50, closes the one at 100
            p.enter("p", 10, 0, 1, extra(p, 10))
            p.enter("q", 10, 0, 1, extra(p, 10))
            p.evict_thread(10)                         # two stacks: the first's finalizer evicts the thread again
            p.enter("m", 11, 0, 1, (Reenter(p, 11), "a"))
            p.leave_matching("m", 11, (None, "a"))
            p.counts()
            del p
            gc.collect()
    """)


# ---- locate(): every length and offset from outside is range-checked ----------------------------------------

GOOD_LAYOUT = (0, 8, 8, 16, 4096)
HUGE = sys.maxsize


def test_locate_refuses_an_impossible_layout_before_reading_a_byte() -> None:
    """Offsets and sizes past the header or the page, negative or near the integer limits: a ValueError
    naming the layout, for any page (run in a subprocess: a read out of bounds would crash it)."""
    run_isolated(f"""
        import random
        from uprobe_exporter._native import locate, Merge
        from uprobe_exporter.decode.rawpage import RAW_ERROR_REASONS
        from uprobe_exporter.decode.records import LostEvents
        HUGE = {HUGE}
        bad = [(-8, 8, 8, 16, 4096), (0, -8, 8, 16, 4096), (0, 8, 8, -16, 4096), (0, 8, 8, 16, 8),
               (HUGE, 8, 8, 16, 4096), (0, HUGE, 8, 16, 4096), (0, HUGE - 2, 4, HUGE, HUGE),
               (HUGE - 4, 0, 4, HUGE, HUGE),
               (0, 8, 2, 16, 4096), (0, 8, 16, 32, 4096), (9, 0, 8, 16, 4096), (0, 9, 8, 16, 4096), (0, 0, 4, 4, 4096),
               (0, 8, 8, 16, -1), (0, 8, 8, HUGE, HUGE - 1)]
        rng = random.Random(12)
        edges = [-HUGE - 1, -1, 0, 4, 7, 8, 12, 16, 4095, 4096, HUGE - 8, HUGE]
        for _ in range(3000):
            bad.append(tuple(rng.choice(edges) if rng.random() < 0.7 else rng.randrange(-64, 5000) for _ in range(5)))
        # the last: a commit of 32 that made the old walk read 64 bytes before the page (ASan: heap-buffer-overflow)
        pages = [b"", b"\\xff" * 7, b"\\xff" * 4096, bytes(range(256)) * 16, bytes(8) + bytes([32]) + bytes(71)]
        raised = 0
        for layout in bad:
            ts, c_off, c_size, start, size = layout
            possible = (0 <= start <= size and 0 <= ts <= start - 8 and c_size in (4, 8)
                        and 0 <= c_off <= start - c_size)
            for page in pages:
                for out in ([], Merge()):
                    errors = dict.fromkeys(RAW_ERROR_REASONS, 0)
                    try:
                        locate(page, 0, out, [], {{}}, layout, errors, LostEvents)
                    except ValueError as exc:
                        assert not possible and "impossible page layout" in str(exc), (layout, exc)
                        raised += 1
                    else:
                        assert possible, layout
        assert raised > 1000
    """)


def test_locate_checks_its_arguments() -> None:
    from uprobe_exporter.decode.records import LostEvents

    lost: list[LostEvents] = []
    with pytest.raises(TypeError):
        _native.locate(bytearray(16), 0, [], lost, {}, GOOD_LAYOUT, {}, LostEvents)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _native.locate(b"", 0, [], lost, {}, (0, 8, 8, 16), {}, LostEvents)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        _native.locate(b"", 0, [], lost, {}, (0, 8, 8, 16, 1 << 70), {}, LostEvents)
    with pytest.raises(TypeError):
        _native.locate(b"", 0, (), lost, {}, GOOD_LAYOUT, {}, LostEvents)  # type: ignore[arg-type]
    assert _native.locate(b"", 0, [], lost, {}, GOOD_LAYOUT, {}, LostEvents) == 0


def _page(commit: int, data: bytes, ts: int = 1000, c_size: int = 8) -> bytes:
    return struct.pack("=Q", ts) + (struct.pack("=Q", commit) if c_size == 8 else struct.pack("=I", commit)) + data


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([(0, 8, 8, 16, 4096), (0, 8, 4, 12, 4096), (8, 0, 4, 16, 256), (0, 8, 8, 24, 64)]),
       st.integers(0, (1 << 32) - 1), st.binary(max_size=600), st.integers(0, 700))
def test_locate_on_garbage_pages_counts_and_matches_python(layout: tuple[int, int, int, int, int], commit: int,
                                                           body: bytes, cut: int) -> None:
    """Truncated and garbage pages, commit sizes past the page or the page size, under several valid layouts:
    the native walk counts what it cannot read, never reads past the page (ASan: see the module docstring),
    and does what the Python walk does."""
    from uprobe_exporter.decode.rawpage import PageLayout, RawDecoder

    ts_off, c_off, c_size, start, size = layout
    header = bytearray(start)
    header[ts_off:ts_off + 8] = struct.pack("=Q", 12345)
    header[c_off:c_off + c_size] = commit.to_bytes(8, "little")[:c_size]
    page = (bytes(header) + body)[:cut]
    handlers: dict[int, object] = {i: f"h{i}" for i in range(0, 65536, 7)}
    walks = []
    for twins in (native(), PYTHON):
        d = RawDecoder(PageLayout((ts_off, 8), (c_off, c_size), start, size), handlers,  # type: ignore[arg-type]
                       walk=twins.walk)
        located: list[Any] = []
        lost: list[Any] = []
        walks.append((d.locate(page, 3, located, lost), located, lost, dict(d.errors)))
    assert walks[0] == walks[1]
    offsets: list[int] = [located[3] for located in walks[0][1]]
    assert all(start <= offset <= len(page) for offset in offsets)


# ---- Merge and Released: GC types (their records' handlers can reach back to them) -------------------------

def _one_record_page(event_id: int) -> bytes:
    record = struct.pack("=IHHI", 2 | 5 << 5, event_id, 0, 0)  # type_len 2: 8 bytes of data, the id first
    return struct.pack("=QQ", 1000, len(record)) + record


def _collected(make: Callable[[], object]) -> bool:
    """Whether what ``make`` returns (a weakref-able handler in a cycle) is freed by a collection."""
    import gc
    import weakref

    gone = weakref.ref(make())
    gc.collect()
    return gone() is None


class Handler:
    """A record's handler that holds on to what holds it (as an emitter reaches the reader's merge)."""

    def __init__(self) -> None:
        self.back: object = None

    def __call__(self, page: bytes, offset: int, ts_ns: int, cpu: int) -> None:
        pass


def test_a_cycle_through_a_merge_is_collected() -> None:
    from uprobe_exporter.decode.rawpage import RAW_ERROR_REASONS
    from uprobe_exporter.decode.records import LostEvents

    def make() -> object:
        h, merge = Handler(), _native.Merge(hold_ns=10**12)
        h.back = merge
        _native.locate(_one_record_page(7), 0, merge, [], {7: h}, GOOD_LAYOUT, dict.fromkeys(RAW_ERROR_REASONS, 0),
                       LostEvents)
        assert merge.located == 1
        assert len(merge.push(0, False)) == 0 and merge.held == 1  # held: the merge holds the handler
        import gc
        assert gc.is_tracked(merge) and h in gc.get_referents(merge)
        return h

    assert _collected(make)


def test_a_cycle_through_what_a_merge_released_is_collected() -> None:
    from uprobe_exporter.decode.rawpage import RAW_ERROR_REASONS
    from uprobe_exporter.decode.records import LostEvents

    def make() -> object:
        h, merge = Handler(), _native.Merge()
        _native.locate(_one_record_page(7), 0, merge, [], {7: h}, GOOD_LAYOUT, dict.fromkeys(RAW_ERROR_REASONS, 0),
                       LostEvents)
        released = merge.push(0, True)
        assert len(released) == 1 and released[0][1] is h
        h.back = released
        import gc
        assert gc.is_tracked(released) and h in gc.get_referents(released)
        _native.run(released, dict.fromkeys(RAW_ERROR_REASONS, 0), struct.error)  # runs it, keeps it
        return h

    assert _collected(make)


def test_released_and_lines_cannot_be_made_half_built_or_subclassed() -> None:
    run_isolated("""
        from uprobe_exporter._native import Lines, Merge, Released
        for make in (lambda: Released(), lambda: Released.__new__(Released),
                     lambda: type("S", (Merge,), {}), lambda: type("S", (Lines,), {}),
                     lambda: type("S", (Released,), {}), lambda: Lines(1)):
            try:
                make()
            except TypeError:
                continue
            raise AssertionError(make)
        m = Merge.__new__(Merge)  # whole: the defaults
        assert (m.held, m.located, m.last_ts) == (0, 0, None) and len(m.push(0, True)) == 0
        lines = Lines.__new__(Lines)
        lines.append(b"x\\n")
        assert lines.take() == (b"x\\n", 1)
    """)


# ---- the stub says what the extension has ------------------------------------------------------------------

def _stub() -> dict[str, set[str] | None]:
    """The stub's public names: a class's public and dunder members (defs, properties), None for a function."""
    import ast

    tree = ast.parse((ROOT / "uprobe_exporter" / "_native.pyi").read_text())
    out: dict[str, set[str] | None] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            out[node.name] = None
        elif isinstance(node, ast.ClassDef):
            out[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)} | {
                n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return out


def test_the_stub_matches_the_extension() -> None:
    stub = _stub()
    assert set(stub) == {n for n in dir(_native) if not n.startswith("_")}
    for name, members in stub.items():
        obj = getattr(_native, name)
        if members is None:
            assert callable(obj) and not isinstance(obj, type), name
            continue
        assert isinstance(obj, type), name
        public = {m for m in vars(obj) if not m.startswith("_")}
        special = {"__len__", "__getitem__", "__call__"} & set(vars(obj))
        declared = {m for m in members if not m.startswith("_") or m in special}
        assert declared == public | special, f"{name}: the stub declares {sorted(declared)}, the type has " \
                                             f"{sorted(public | special)}"
        constructible = "__new__" in vars(obj)  # a tp_new of its own (Released has none: only push() makes one)
        assert ("__new__" in members or "__init__" in members) == constructible, name


def test_the_stub_has_no_any_where_the_type_is_known() -> None:
    """Any only as the bound of a frame's items and the frame type of the pairing a context holds (a frame's
    extra is the caller's)."""
    text = (ROOT / "uprobe_exporter" / "_native.pyi").read_text()
    lines = [line for line in text.splitlines() if re.search(r"\bAny\b", line)]
    allowed = ("from typing import", "_F = TypeVar", "pairing: Pairing[Any]")  # (the member and the keyword)
    assert all(any(a in line for a in allowed) for line in lines), lines
