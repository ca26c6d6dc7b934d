/* Stage pipeline: Histogram, the native twin of pipeline/histogram.py's Histogram (one series of a
 * ProbeHistograms, which stays the reference for the pure path and what the tests compare this with):
 * it owns its bucket counts and its sum as C integers, observe(duration_ns) adds to them, and the metrics
 * collector reads them through the counts/sum_ns properties (fresh Python objects: a scrape on another
 * thread sees one observation whole or not at all, the GIL being held across each call).
 *
 * The bucket is bisect_left over the bounds, as Python's bisect.bisect_left (a duration equal to a bound is
 * in that bound's bucket, le); the sum is a 128-bit integer, so no realistic run overflows it (2**127 ns),
 * and durations between -2**64 and 2**64 (any difference of two u64 timestamps) are taken exactly.
 *
 * The HistCache is a native emitter's way into its probe's ProbeHistograms (hist_init, hist_observe,
 * hist_clear in native.h): a label set whose series is a native Histogram is observed here, in C; one
 * without its series yet (new labels, which ProbeHistograms.observe folds past the cardinality cap) or
 * with a Python series is left to ProbeHistograms.observe, so the fast path never changes what observe()
 * would have done. The last label set seen and its series are cached: an entry's labels come back with
 * its return as the same objects (comm strings are shared). */
#include "native.h"

typedef struct {
    PyObject_HEAD
    Py_ssize_t nbounds;
    long long *bounds; /* ascending (as ProbeHistograms makes them; bisect_left, like Python's, assumes it) */
    uint64_t *counts;  /* nbounds + 1: the last is +Inf */
    __int128 sum;
} Histogram;

static Py_ssize_t bucket(const Histogram *h, __int128 d) {
    Py_ssize_t lo = 0, hi = h->nbounds;
    while (lo < hi) { /* bisect_left: a duration equal to a bound is in that bound's bucket */
        Py_ssize_t mid = (lo + hi) / 2;
        if ((__int128)h->bounds[mid] < d) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static inline void histogram_add(Histogram *h, __int128 d) {
    h->counts[bucket(h, d)]++;
    h->sum += d;
}

/* An int as a 128-bit integer, when it is between -2**64 and 2**64 (exclusive); else OverflowError. */
static int as_duration(PyObject *o, __int128 *out) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (!overflow) { *out = v; return 0; }
    PyObject *magnitude = overflow > 0 ? Py_NewRef(o) : PyNumber_Negative(o);
    if (!magnitude) return -1;
    unsigned long long u = PyLong_AsUnsignedLongLong(magnitude);
    Py_DECREF(magnitude);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError))
            PyErr_SetString(PyExc_OverflowError, "Histogram.observe: a duration at or past 2**64 ns");
        return -1;
    }
    *out = overflow > 0 ? (__int128)u : -(__int128)u;
    return 0;
}

static PyObject *int128_to_long(__int128 v) {
    if (v >= LLONG_MIN && v <= LLONG_MAX) return PyLong_FromLongLong((long long)v);
    unsigned __int128 m = v < 0 ? -(unsigned __int128)v : (unsigned __int128)v;
    PyObject *hi = PyLong_FromUnsignedLongLong((unsigned long long)(m >> 64));
    PyObject *lo = PyLong_FromUnsignedLongLong((unsigned long long)m);
    PyObject *shift = PyLong_FromLong(64);
    PyObject *shifted = hi && shift ? PyNumber_Lshift(hi, shift) : NULL;
    PyObject *r = shifted && lo ? PyNumber_Or(shifted, lo) : NULL;
    Py_XDECREF(hi); Py_XDECREF(lo); Py_XDECREF(shift); Py_XDECREF(shifted);
    if (r && v < 0) Py_SETREF(r, PyNumber_Negative(r));
    return r;
}

/* Histogram(bounds_ns): bounds in integer nanoseconds, each within 64 bits (a wider one: OverflowError,
 * and ProbeHistograms takes the Python series instead). */
static PyObject *histogram_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"bounds_ns", NULL};
    PyObject *bounds;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:Histogram", names, &bounds)) return NULL;
    PyObject *seq = PySequence_Fast(bounds, "Histogram(bounds_ns): a sequence of ints");
    if (!seq) return NULL;
    Histogram *self = (Histogram *)type->tp_alloc(type, 0);
    if (!self) { Py_DECREF(seq); return NULL; }
    self->nbounds = PySequence_Fast_GET_SIZE(seq);
    self->bounds = PyMem_Calloc(self->nbounds ? self->nbounds : 1, sizeof(long long));
    self->counts = PyMem_Calloc(self->nbounds + 1, sizeof(uint64_t));
    if (!self->bounds || !self->counts) { PyErr_NoMemory(); goto fail; }
    for (Py_ssize_t i = 0; i < self->nbounds; i++) {
        PyObject *b = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyLong_Check(b)) { PyErr_SetString(PyExc_TypeError, "Histogram(bounds_ns): a sequence of ints"); goto fail; }
        self->bounds[i] = PyLong_AsLongLong(b);
        if (self->bounds[i] == -1 && PyErr_Occurred()) goto fail;
    }
    Py_DECREF(seq);
    return (PyObject *)self;
fail:
    Py_DECREF(seq);
    Py_DECREF(self);
    return NULL;
}

static void histogram_dealloc(Histogram *self) {
    PyMem_Free(self->bounds);
    PyMem_Free(self->counts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *histogram_observe(Histogram *self, PyObject *duration) {
    __int128 d;
    if (as_duration(duration, &d) < 0) return NULL;
    histogram_add(self, d);
    Py_RETURN_NONE;
}

static PyObject *histogram_counts(Histogram *self, void *closure) {
    (void)closure;
    PyObject *out = PyList_New(self->nbounds + 1);
    for (Py_ssize_t i = 0; out && i <= self->nbounds; i++) {
        PyObject *n = PyLong_FromUnsignedLongLong(self->counts[i]);
        if (!n) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, n);
    }
    return out;
}

static PyObject *histogram_sum(Histogram *self, void *closure) {
    (void)closure;
    return int128_to_long(self->sum);
}

static PyObject *histogram_bounds(Histogram *self, void *closure) {
    (void)closure;
    PyObject *out = PyList_New(self->nbounds);
    for (Py_ssize_t i = 0; out && i < self->nbounds; i++) {
        PyObject *n = PyLong_FromLongLong(self->bounds[i]);
        if (!n) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, n);
    }
    return out;
}

static PyObject *histogram_repr(Histogram *self) {
    PyObject *counts = histogram_counts(self, NULL), *sum = counts ? histogram_sum(self, NULL) : NULL;
    PyObject *r = sum ? PyUnicode_FromFormat("Histogram(counts=%R, sum_ns=%R)", counts, sum) : NULL;
    Py_XDECREF(counts); Py_XDECREF(sum);
    return r;
}

static PyMethodDef histogram_methods[] = {
    {"observe", (PyCFunction)histogram_observe, METH_O, "observe(duration_ns): one more call of that duration."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef histogram_getset[] = {
    {"counts", (getter)histogram_counts, NULL, "the count per bucket, the last +Inf (a new list)", NULL},
    {"sum_ns", (getter)histogram_sum, NULL, "the sum of the durations observed, in nanoseconds", NULL},
    {"bounds_ns", (getter)histogram_bounds, NULL, "the buckets' upper bounds in nanoseconds (a new list)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject HistogramType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uprobe_exporter._native.Histogram",
    .tp_basicsize = sizeof(Histogram),
    .tp_flags = Py_TPFLAGS_DEFAULT, /* final; holds no references, so not a GC type */
    .tp_new = histogram_new,
    .tp_dealloc = (destructor)histogram_dealloc,
    .tp_repr = (reprfunc)histogram_repr,
    .tp_methods = histogram_methods,
    .tp_getset = histogram_getset,
    .tp_doc = "One latency series: bucket counts and sum, owned in C (pipeline/histogram.py's Histogram).",
};

/* ---- HistCache: a native emitter's way in ---------------------------------------------------------- */


/* series: the probe's series table (ProbeHistograms.series, a dict: label values -> series), or None. */
int hist_init(HistCache *c, PyObject *series) {
    memset(c, 0, sizeof *c);
    if (series == Py_None) return 0;
    if (!PyDict_CheckExact(series)) {
        PyErr_SetString(PyExc_TypeError, "hist_init: the series table must be a dict");
        return -1;
    }
    c->series = Py_NewRef(series);
    return 0;
}

void hist_clear(HistCache *c) {
    Py_CLEAR(c->series);
    Py_CLEAR(c->labels);
    Py_CLEAR(c->last);
}

/* The same label values as the cached ones, by identity (then they are equal as dict keys too). */
static int same_labels(PyObject *a, PyObject *b) {
    if (a == b) return 1;
    if (!b || !PyTuple_CheckExact(a) || !PyTuple_CheckExact(b) || PyTuple_GET_SIZE(a) != PyTuple_GET_SIZE(b)) return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(a); i++)
        if (PyTuple_GET_ITEM(a, i) != PyTuple_GET_ITEM(b, i) || !PyUnicode_CheckExact(PyTuple_GET_ITEM(a, i))) return 0;
    return 1;
}

int hist_observe(HistCache *c, PyObject *labels, long long duration) {
    if (!c->series) return 0;
    if (!same_labels(labels, c->labels)) {
        PyObject *h = PyDict_GetItemWithError(c->series, labels);
        if (!h) return PyErr_Occurred() ? -1 : 0;
        if (!Py_IS_TYPE(h, &HistogramType)) return 0; /* a Python series: ProbeHistograms.observe */
        Py_XSETREF(c->labels, Py_NewRef(labels));
        Py_XSETREF(c->last, Py_NewRef(h));
    }
    histogram_add((Histogram *)c->last, duration);
    return 1;
}
