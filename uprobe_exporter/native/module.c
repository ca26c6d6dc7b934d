/* The module uprobe_exporter._native: its definition (multi-phase init, PEP 489) and nothing else. Each
 * source it gathers is the native twin of a Python reference, named after the stage it implements; the
 * reference stays the fallback (where this is not built, or UPROBE_EXPORTER_PURE=1) and what the tests
 * compare the twin with:
 *   walk.c       locate(), run()  decode/rawpage.py walk; pipeline/raw.py run_located
 *   emit.c       EmitPlan         the record path (pipeline/raw.py RawPipeline.record_handler), described
 *                                 by pipeline/rawemit.py; EmitContext: rawemit.Sinks; Clock: render.PyClock
 *   pairing.c    Pairing          pipeline/pairing.py PythonPairing
 *   merge.c      Merge, Released  decode/merge.py CpuMerge
 *   lines.c      Lines            pipeline/lines.py LineList
 *   histogram.c  Histogram        pipeline/histogram.py Histogram (one series of ProbeHistograms)
 *
 * The types are static (PyType_Ready'd once per process) and module.c keeps no per-module state, so the
 * module may be executed again (importlib.reload, a fresh import after del sys.modules[...]); it does not
 * support subinterpreters with their own GIL (the static types are shared).
 *
 * Free-threaded builds (3.13t, Py_GIL_DISABLED) are not a target: every type here relies on the GIL to
 * make each call atomic against a scrape on another thread (Pairing.counts, Histogram.counts...). The
 * module says so with Py_MOD_GIL_USED, and importing it there re-enables the GIL with a RuntimeWarning
 * (pyproject.toml's pytest filterwarnings lets exactly that warning through). */
#include "native.h"

PyObject *walk_locate(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *walk_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef methods[] = {
    {"locate", (PyCFunction)(void (*)(void))walk_locate, METH_FASTCALL,
     "locate(page, cpu, out, lost, handlers, layout, errors, lost_type): walk a trace_pipe_raw page "
     "(RawDecoder.locate)."},
    {"run", (PyCFunction)(void (*)(void))walk_run, METH_FASTCALL,
     "run(located, errors, struct_error): run located records through their handlers (Pipeline.process_located)."},
    {NULL, NULL, 0, NULL},
};

static int add_type(PyObject *m, const char *name, PyTypeObject *type) {
    return PyType_Ready(type) < 0 ? -1 : PyModule_AddObjectRef(m, name, (PyObject *)type);
}

static int exec_module(PyObject *m) {
    if (plan_module_init() < 0) return -1; /* emit.c's constants */
    if (add_type(m, "EmitPlan", &EmitPlanType) < 0
        || add_type(m, "EmitContext", &EmitContextType) < 0
        || add_type(m, "Clock", &ClockType) < 0
        || add_type(m, "Pairing", &PairingType) < 0
        || add_type(m, "Merge", &MergeType) < 0
        || add_type(m, "Released", &ReleasedType) < 0
        || add_type(m, "Lines", &LinesType) < 0
        || add_type(m, "Histogram", &HistogramType) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_USED}, /* not a target: see above */
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "uprobe_exporter._native",
    .m_doc = "Native twins of the raw reader's hot path (see uprobe_exporter/native/module.c).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModuleDef_Init(&module); }
