/* Stage pipeline: Lines, the JSON lines of one batch in one growing buffer, the native twin of
 * pipeline/lines.py's LineList (a list of bytes joined per batch). Native emitters render each line
 * straight into it, the record path appends its own, in record order; take() hands the batch over as one
 * bytes object. The buffer is kept for the next batch, so after the first batches it does not grow again.
 * It holds no reference to any object (only its char buffer), so it cannot be part of a cycle and is not
 * a GC type. */
#include "native.h"

#define KEEP_AT_MOST (16 << 20) /* a buffer grown past this by one large batch is freed after it */

int lines_reserve(Lines *self, Py_ssize_t total) {
    if (total <= self->cap) return 0;
    Py_ssize_t cap = self->cap * 2 > total ? self->cap * 2 : total;
    if (cap < 65536) cap = 65536;
    char *b = PyMem_Realloc(self->buf, cap);
    if (!b) { PyErr_NoMemory(); return -1; }
    self->buf = b;
    self->cap = cap;
    return 0;
}

static PyObject *lines_append(Lines *self, PyObject *line) {
    if (!PyBytes_Check(line)) { PyErr_SetString(PyExc_TypeError, "Lines.append(bytes)"); return NULL; }
    Py_ssize_t n = PyBytes_GET_SIZE(line);
    if (lines_reserve(self, self->len + n) < 0) return NULL;
    memcpy(self->buf + self->len, PyBytes_AS_STRING(line), n);
    self->len += n;
    self->count++;
    Py_RETURN_NONE;
}

/* take() -> (the batch's lines as one bytes, how many), and start the next batch */
static PyObject *lines_take(Lines *self, PyObject *unused) {
    (void)unused;
    PyObject *data = PyBytes_FromStringAndSize(self->buf, self->len);
    if (!data) return NULL;
    PyObject *batch = Py_BuildValue("(Nn)", data, self->count);
    if (!batch) return NULL;
    self->len = self->count = 0;
    if (self->cap > KEEP_AT_MOST) {
        PyMem_Free(self->buf);
        self->buf = NULL;
        self->cap = 0;
    }
    return batch;
}

static Py_ssize_t lines_len(Lines *self) { return self->count; }

static PyObject *lines_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "Lines() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static void lines_dealloc(Lines *self) {
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef lines_methods[] = {
    {"append", (PyCFunction)lines_append, METH_O, "Append one line (bytes)."},
    {"take", (PyCFunction)lines_take, METH_NOARGS, "(the batch's lines joined, how many); empties."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods lines_sequence = {.sq_length = (lenfunc)lines_len};

PyTypeObject LinesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uprobe_exporter._native.Lines",
    .tp_basicsize = sizeof(Lines),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = lines_new,
    .tp_dealloc = (destructor)lines_dealloc,
    .tp_methods = lines_methods,
    .tp_as_sequence = &lines_sequence,
    .tp_doc = "The JSON lines of a batch in one buffer (rawemit.LineList's native twin).",
};
