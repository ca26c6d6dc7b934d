/* Stage decode: Merge is decode/merge.py's CpuMerge in C, the exact twin of that Python reference (which
 * stays the fallback and what the tests compare this with). locate() appends the records it finds in a page here, as C structs
 * instead of (ts_ns, handler, page, offset, cpu) tuples; push() merges the new records with the ones held
 * back by the previous push into one timestamp order (a stable sort of the new records in the order they
 * were located, then the held ones, as Python's sorted()), releases those older than now - hold_ns (all
 * but max_held at most) and holds the rest. What it releases is a Released: a sequence that run() emits
 * in C, and that builds a Located tuple only when Python indexes it.
 *
 * Both hold references to the records' handlers (emitters, which reach the pipeline and the reader that
 * holds the Merge: a cycle), so both are GC types: tp_traverse visits the handlers (the pages are bytes,
 * which hold no references), tp_clear releases the records after detaching them, so that a finalizer
 * that runs meanwhile finds an empty, consistent object. */
#include "native.h"
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    long long hold_ns;
    Py_ssize_t max_held;
    Entry *fresh, *held; /* located since the last push, in the order located; held back by it */
    Py_ssize_t nfresh, capfresh, nheld, capheld;
} Merge;

static void clear_entries(Entry *e, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) { Py_DECREF(e[i].handler); Py_DECREF(e[i].page); }
}

/* Make room for n entries in *a (of capacity *cap). */
static int reserve(Entry **a, Py_ssize_t *cap, Py_ssize_t n) {
    if (n <= *cap) return 0;
    Py_ssize_t grown = *cap ? *cap : 256;
    while (grown < n) grown *= 2;
    Entry *b = PyMem_Realloc(*a, grown * sizeof(Entry));
    if (!b) { PyErr_NoMemory(); return -1; }
    *a = b;
    *cap = grown;
    return 0;
}

int merge_reserve(PyObject *merge, Py_ssize_t more) {
    Merge *self = (Merge *)merge;
    return reserve(&self->fresh, &self->capfresh, self->nfresh + more);
}

int merge_append(PyObject *merge, uint64_t ts, PyObject *handler, PyObject *page, Py_ssize_t offset, long cpu) {
    Merge *self = (Merge *)merge;
    if (reserve(&self->fresh, &self->capfresh, self->nfresh + 1) < 0) return -1;
    self->fresh[self->nfresh++] = (Entry){ts, Py_NewRef(handler), Py_NewRef(page), offset, cpu};
    return 0;
}

/* Stable sort by timestamp: merges adjacent non-decreasing runs, the left one first on ties, until one
 * run is left (linear for what is already in order, as the records of one CPU are). */
static void sort_entries(Entry *a, Py_ssize_t n, Entry *tmp) {
    Py_ssize_t i = 1;
    while (i < n && a[i - 1].ts <= a[i].ts) i++;
    if (i >= n) return;
    Entry *src = a, *dst = tmp;
    for (;;) {
        Py_ssize_t runs = 0;
        for (i = 0; i < n; runs++) {
            Py_ssize_t j = i + 1, k;
            while (j < n && src[j - 1].ts <= src[j].ts) j++;
            for (k = j < n ? j + 1 : n; k < n && src[k - 1].ts <= src[k].ts; k++) {}
            Py_ssize_t l = i, r = j, d = i;
            while (l < j && r < k) dst[d++] = src[r].ts < src[l].ts ? src[r++] : src[l++];
            while (l < j) dst[d++] = src[l++];
            while (r < k) dst[d++] = src[r++];
            i = k;
        }
        Entry *swap = src;
        src = dst;
        dst = swap;
        if (runs == 1) break;
    }
    if (src != a) memcpy(a, src, n * sizeof(Entry));
}

/* push(now_ns, final) -> Released: as CpuMerge.push(runs, now_ns, final) with the runs located here */
static PyObject *merge_push(Merge *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "push(now_ns, final)"); return NULL; }
    long long now = PyLong_AsLongLong(args[0]);
    int final = PyObject_IsTrue(args[1]);
    if ((now == -1 && PyErr_Occurred()) || final < 0) return NULL;
    Py_ssize_t n = self->nfresh + self->nheld;
    /* everything that can fail comes first: then no record changes hands until none can be lost */
    Entry *tmp = PyMem_Malloc((n ? n : 1) * sizeof(Entry));
    Released *out = tmp && reserve(&self->held, &self->capheld, n) == 0 ? PyObject_GC_New(Released, &ReleasedType) : NULL;
    if (out) {
        out->n = 0;
        out->entries = PyMem_Malloc((n ? n : 1) * sizeof(Entry));
        PyObject_GC_Track(out);
    }
    if (!out || !out->entries) {
        PyMem_Free(tmp);
        Py_XDECREF(out);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    Entry *work = out->entries;
    if (self->nfresh) memcpy(work, self->fresh, self->nfresh * sizeof(Entry));
    if (self->nheld) memcpy(work + self->nfresh, self->held, self->nheld * sizeof(Entry));
    self->nfresh = self->nheld = 0;
    out->n = n; /* from here the entries are out's */
    sort_entries(work, n, tmp);
    PyMem_Free(tmp);
    Py_ssize_t cut = n;
    if (!final) {
        long long limit;
        int none = __builtin_sub_overflow(now, self->hold_ns, &limit) || limit < 0; /* nothing is that old */
        Py_ssize_t lo = 0, hi = n;
        while (lo < hi) { /* bisect_right, as Python's: the same answer on the same entries */
            Py_ssize_t mid = (lo + hi) / 2;
            if (none || (uint64_t)limit < work[mid].ts) hi = mid;
            else lo = mid + 1;
        }
        cut = n - self->max_held > lo ? n - self->max_held : lo;
    }
    if (n > cut) memcpy(self->held, work + cut, (n - cut) * sizeof(Entry)); /* room was reserved */
    self->nheld = n - cut;
    out->n = cut;
    return (PyObject *)out;
}

static PyObject *merge_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"hold_ns", "max_held", NULL};
    long long hold_ns = 2000000;
    Py_ssize_t max_held = 1 << 16;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Ln", names, &hold_ns, &max_held)) return NULL;
    if (max_held < 0 || hold_ns < 0) {
        PyErr_SetString(PyExc_ValueError, "hold_ns and max_held must not be negative");
        return NULL;
    }
    Merge *self = (Merge *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->hold_ns = hold_ns;
    self->max_held = max_held;
    return (PyObject *)self;
}

static int merge_traverse(Merge *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < self->nfresh; i++) Py_VISIT(self->fresh[i].handler);
    for (Py_ssize_t i = 0; i < self->nheld; i++) Py_VISIT(self->held[i].handler);
    return 0;
}

static int merge_clear(Merge *self) {
    Entry *fresh = self->fresh, *held = self->held;
    Py_ssize_t nfresh = self->nfresh, nheld = self->nheld;
    self->fresh = self->held = NULL;
    self->nfresh = self->capfresh = self->nheld = self->capheld = 0;
    clear_entries(fresh, nfresh);
    clear_entries(held, nheld);
    PyMem_Free(fresh);
    PyMem_Free(held);
    return 0;
}

static void merge_dealloc(Merge *self) {
    PyObject_GC_UnTrack(self);
    merge_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *merge_held(Merge *self, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(self->nheld);
}

static PyObject *merge_located(Merge *self, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(self->nfresh);
}

static PyObject *merge_last_ts(Merge *self, void *closure) {
    (void)closure;
    if (!self->nfresh) Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(self->fresh[self->nfresh - 1].ts);
}

static PyMethodDef merge_methods[] = {
    {"push", (PyCFunction)(void (*)(void))merge_push, METH_FASTCALL, "Merge, release what is old enough, hold the rest."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef merge_members[] = {
    {"hold_ns", T_LONGLONG, offsetof(Merge, hold_ns), READONLY, NULL},
    {"max_held", T_PYSSIZET, offsetof(Merge, max_held), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef merge_getset[] = {
    {"held", (getter)merge_held, NULL, "the number of records held back", NULL},
    {"located", (getter)merge_located, NULL, "the number of records located since the last push", NULL},
    {"last_ts", (getter)merge_last_ts, NULL, "the timestamp of the last record located, or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject MergeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uprobe_exporter._native.Merge",
    .tp_basicsize = sizeof(Merge),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = merge_new,
    .tp_dealloc = (destructor)merge_dealloc,
    .tp_traverse = (traverseproc)merge_traverse,
    .tp_clear = (inquiry)merge_clear,
    .tp_methods = merge_methods,
    .tp_members = merge_members,
    .tp_getset = merge_getset,
    .tp_doc = "decode.merge.CpuMerge in C: locate() appends to it, push() releases in timestamp order.",
};

/* ---- Released: what one push released ----------------------------------------------------------- */

static int released_traverse(Released *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < self->n; i++) Py_VISIT(self->entries[i].handler);
    return 0;
}

static int released_clear(Released *self) {
    Entry *entries = self->entries;
    Py_ssize_t n = self->n;
    self->entries = NULL;
    self->n = 0;
    if (entries) clear_entries(entries, n);
    PyMem_Free(entries);
    return 0;
}

static void released_dealloc(Released *self) {
    PyObject_GC_UnTrack(self);
    released_clear(self);
    PyObject_GC_Del(self);
}

static Py_ssize_t released_len(Released *self) { return self->n; }

static PyObject *released_item(Released *self, Py_ssize_t i) {
    if (i < 0 || i >= self->n) { PyErr_SetString(PyExc_IndexError, "Released index out of range"); return NULL; }
    Entry *e = &self->entries[i];
    return Py_BuildValue("(KOOnl)", (unsigned long long)e->ts, e->handler, e->page, e->offset, e->cpu);
}

static PySequenceMethods released_sequence = {
    .sq_length = (lenfunc)released_len,
    .sq_item = (ssizeargfunc)released_item,
};

PyTypeObject ReleasedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uprobe_exporter._native.Released",
    .tp_basicsize = sizeof(Released),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)released_dealloc,
    .tp_traverse = (traverseproc)released_traverse,
    .tp_clear = (inquiry)released_clear,
    .tp_as_sequence = &released_sequence,
    .tp_doc = "Located records released by Merge.push, in timestamp order (run() emits them in C).",
};
