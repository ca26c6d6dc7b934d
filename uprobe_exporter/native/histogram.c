/* The native emitters' fast path into a probe's latency histograms (histogram.ProbeHistograms): the
 * same additions as ProbeHistograms.observe for a label set that already has its series, made in C
 * (the bucket by bisect_left on the bounds as C integers, the count and the sum as Python ints in
 * the Histogram, where the metrics collector reads them). A label set without a series yet is left to
 * observe() in Python, which folds values past the cardinality cap and creates the series, so the
 * fast path never changes what observe() would have done. The last label set seen and its series are
 * cached: the entry's labels come back with its return as the same objects (comm strings are shared). */
#include "native.h"

static PyObject *str_counts, *str_sum_ns, *one;

int hist_init(HistCache *c, PyObject *histograms) {
    memset(c, 0, sizeof *c);
    if (histograms == Py_None) return 0;
    if ((!str_counts && !(str_counts = PyUnicode_InternFromString("counts")))
        || (!str_sum_ns && !(str_sum_ns = PyUnicode_InternFromString("sum_ns"))) || (!one && !(one = PyLong_FromLong(1))))
        return -1;
    PyObject *series = PyObject_GetAttrString(histograms, "series");
    PyObject *bounds = series ? PyObject_GetAttrString(histograms, "bounds_ns") : NULL;
    int ok = bounds && PyDict_CheckExact(series) && PyList_Check(bounds);
    if (ok) {
        c->nbounds = PyList_GET_SIZE(bounds);
        c->bounds = PyMem_Calloc(c->nbounds ? c->nbounds : 1, sizeof(long long));
        if (!c->bounds) { PyErr_NoMemory(); ok = 0; }
        for (Py_ssize_t i = 0; ok && i < c->nbounds; i++) {
            c->bounds[i] = PyLong_AsLongLong(PyList_GET_ITEM(bounds, i));
            if (c->bounds[i] == -1 && PyErr_Occurred()) ok = 0;
        }
    }
    Py_XDECREF(bounds);
    if (!ok) { /* not what it takes (a bound past 64 bits): observe() in Python does it all */
        Py_XDECREF(series);
        PyMem_Free(c->bounds);
        memset(c, 0, sizeof *c);
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        return 0;
    }
    c->series = series;
    return 0;
}

void hist_clear(HistCache *c) {
    Py_CLEAR(c->series);
    Py_CLEAR(c->labels);
    Py_CLEAR(c->last);
    PyMem_Free(c->bounds);
    c->bounds = NULL;
}

/* The same label values as the cached ones, by identity (then they are equal as dict keys too). */
static int same_labels(PyObject *a, PyObject *b) {
    if (a == b) return 1;
    if (!b || !PyTuple_CheckExact(a) || !PyTuple_CheckExact(b) || PyTuple_GET_SIZE(a) != PyTuple_GET_SIZE(b)) return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(a); i++)
        if (PyTuple_GET_ITEM(a, i) != PyTuple_GET_ITEM(b, i) || !PyUnicode_CheckExact(PyTuple_GET_ITEM(a, i))) return 0;
    return 1;
}

/* counts[index] += 1 and h.sum_ns += d, on Python ints */
static int add(PyObject *h, PyObject *counts, Py_ssize_t index, PyObject *d) {
    PyObject *count = PyNumber_Add(PyList_GET_ITEM(counts, index), one);
    if (!count) return -1;
    PyList_SetItem(counts, index, count);
    PyObject *old = PyObject_GetAttr(h, str_sum_ns);
    PyObject *sum = old ? PyNumber_Add(old, d) : NULL;
    int bad = !sum || PyObject_SetAttr(h, str_sum_ns, sum) < 0;
    Py_XDECREF(old); Py_XDECREF(sum);
    return bad ? -1 : 0;
}

int hist_observe(HistCache *c, PyObject *labels, long long duration) {
    if (!c->series) return 0;
    PyObject *h;
    if (same_labels(labels, c->labels)) {
        h = c->last;
    } else {
        h = PyDict_GetItemWithError(c->series, labels);
        if (!h) return PyErr_Occurred() ? -1 : 0;
        Py_XSETREF(c->labels, Py_NewRef(labels));
        Py_XSETREF(c->last, Py_NewRef(h));
    }
    Py_ssize_t lo = 0, hi = c->nbounds;
    while (lo < hi) { /* bisect_left: a duration equal to a bound is in that bound's bucket */
        Py_ssize_t mid = (lo + hi) / 2;
        if (c->bounds[mid] < duration) lo = mid + 1;
        else hi = mid;
    }
    PyObject *counts = PyObject_GetAttr(h, str_counts), *d = PyLong_FromLongLong(duration);
    int bad = !counts || !d;
    if (!bad && (!PyList_Check(counts) || lo >= PyList_GET_SIZE(counts))) {
        PyErr_SetString(PyExc_TypeError, "Histogram.counts");
        bad = 1;
    }
    bad = bad || add(h, counts, lo, d) < 0;
    Py_XDECREF(counts); Py_XDECREF(d);
    return bad ? -1 : 1;
}
