/* What the sources of the _native extension share (the module itself is defined in module.c, which
 * lists each source's Python twin): pairing.c's Pairing, which emit.c's emitters call without going
 * through Python; merge.c's located records, which walk.c's locate() fills and run() emits; lines.c's
 * buffer, which the emitters render into; histogram.c's series, which they observe into. */
#ifndef UPROBE_EXPORTER_NATIVE_H
#define UPROBE_EXPORTER_NATIVE_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct { uint64_t sp; long long ts; PyObject *extra; } CFrame; /* a pending entry */

extern PyTypeObject PairingType;
int pairing_enter(PyObject *pairing, PyObject *probe, long long tid, uint64_t sp, long long ts, PyObject *extra);
PyObject *pairing_leave(PyObject *pairing, PyObject *probe, long long tid, uint64_t sp);
int pairing_leave_c(PyObject *pairing, PyObject *probe, long long tid, uint64_t sp, CFrame *entry);
/* leave_matching(probe, tid, want) with C values: 1 and the frame, 0 (counted), -1 with an exception */
int pairing_leave_matching_c(PyObject *pairing, PyObject *probe, long long tid, PyObject *want, CFrame *entry);

/* A located record (rawpage.Located as a C struct): strong references to its handler and page. */
typedef struct { uint64_t ts; PyObject *handler, *page; Py_ssize_t offset; long cpu; } Entry;
/* Merge's released batch: a read-only sequence of Located tuples, made only when Python asks */
typedef struct { PyObject_HEAD Entry *entries; Py_ssize_t n; } Released;
extern PyTypeObject MergeType, ReleasedType;
int merge_reserve(PyObject *merge, Py_ssize_t more); /* room for `more` appends that then cannot fail */
int merge_append(PyObject *merge, uint64_t ts, PyObject *handler, PyObject *page, Py_ssize_t offset, long cpu);

/* lines.c: a batch's JSON lines in one buffer, which native emitters render into */
typedef struct { PyObject_HEAD char *buf; Py_ssize_t len, cap, count; } Lines;
extern PyTypeObject LinesType;
int lines_reserve(Lines *lines, Py_ssize_t total);

/* histogram.c: the native series (Histogram), and a native emitter's way into its probe's latency
 * histograms: hist_init takes the probe's series table (ProbeHistograms.series) or None; hist_observe adds in C
 * to a label set's native series (1), leaves the rest to ProbeHistograms.observe (0), or fails (-1). An
 * owner of a HistCache visits series, labels and last in its tp_traverse and calls hist_clear. */
extern PyTypeObject HistogramType;
typedef struct { PyObject *series, *labels, *last; } HistCache;
int hist_init(HistCache *cache, PyObject *series);
int hist_observe(HistCache *cache, PyObject *labels, long long duration); /* 1 done, 0 for Python, -1 error */
void hist_clear(HistCache *cache);

/* emit.c: the native emitter (EmitPlan), its context (EmitContext) and the renderer's clock (Clock) */
extern PyTypeObject EmitPlanType, EmitContextType, ClockType;
PyObject *plan_emit(PyObject *plan, PyObject *page, Py_ssize_t offset, uint64_t ts, long cpu, int defer);
PyObject *plan_args(PyObject *plan, PyObject *const *args, int defer); /* (page, offset, ts_ns, cpu) */
int plan_flush_deferred(void); /* add the counts plan_emit(..., defer=1) deferred, of every plan */
int plan_module_init(void); /* emit.c's constants */
int add_error(PyObject *errors, const char *reason, long long n); /* errors[reason] += n */
#endif
