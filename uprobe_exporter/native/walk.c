/* Stage decode (and the run loop of pipeline): the native twin of decode/rawpage.py's page walk
 * (walk, which stays the reference and the fallback, and which the tests compare this with), and of
 * pipeline/raw.py's run_located, the loop of RawPipeline.process_located (run()). The module itself is
 * defined in module.c. */
#include "native.h"

/* ---- locate(): the page walk of decode/rawpage.py's walk ---------------------------------------------- */

#define COMMIT_MASK ((1ULL << 27) - 1)
#define MISSED_EVENTS (1ULL << 31)
#define MISSED_STORED (1ULL << 30)
#define TS_MSB (~((1ULL << 59) - 1))
enum { TYPE_DATA_MAX = 28, TYPE_PADDING = 29, TYPE_TIME_EXTEND = 30, TYPE_TIME_STAMP = 31 };

static uint32_t u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }

typedef struct { uint64_t ts; PyObject *handler; Py_ssize_t data; } Found;

/* locate(page, cpu, out, lost, handlers, layout, errors, lost_type) -> anomalies. out: a list, which
 * gets (ts_ns, handler, page, offset, cpu) tuples, or a Merge, which gets them as C structs.
 * layout = (timestamp_offset, commit_offset, commit_size, data_offset, page_size). Nothing is appended
 * or counted unless the whole page was walked. A timestamp past 64 bits (only a corrupt page has one)
 * ends the walk as a bad event header, as in Python. */
PyObject *walk_locate(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 8 || !PyBytes_CheckExact(args[0]) || !(PyList_CheckExact(args[2]) || Py_IS_TYPE(args[2], &MergeType))
        || !PyList_CheckExact(args[3])
        || !PyDict_CheckExact(args[4]) || !PyTuple_CheckExact(args[5]) || !PyDict_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "locate(page, cpu, out, lost, handlers, layout, errors, lost_type)");
        return NULL;
    }
    PyObject *page = args[0], *cpu = args[1], *out = args[2], *lost = args[3], *handlers = args[4];
    PyObject *errors = args[6], *lost_type = args[7];
    Py_ssize_t ts_off, c_off, c_size, start, page_size;
    if (!PyArg_ParseTuple(args[5], "nnnnn", &ts_off, &c_off, &c_size, &start, &page_size)) return NULL;
    /* The layout (from events/header_page) is checked before any byte is read: both header fields inside
     * the header, the header before the data, the data inside the page. Each comparison is written so
     * that it cannot overflow, whatever the integers. */
    if (start < 0 || page_size < start || ts_off < 0 || ts_off > start - 8 || c_off < 0 || (c_size != 4 && c_size != 8)
        || c_off > start - c_size) {
        PyErr_Format(PyExc_ValueError, "locate: impossible page layout (timestamp at %zd, commit at %zd size %zd, "
                     "data at %zd, page size %zd)", ts_off, c_off, c_size, start, page_size);
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(page);
    Py_ssize_t n = PyBytes_GET_SIZE(page);
    const char *reason = NULL;
    long page_errors = 0, unknown = 0;
    Found *found = NULL;
    Py_ssize_t nfound = 0, cap = 0;
    PyObject *missed = NULL, *result = NULL;
    if (n < start) {
        if (!n) return PyLong_FromLong(0);
        reason = "page_header";
        goto count;
    }
    /* from here the header fields are inside the page: ts_off + 8 <= start <= n, c_off + c_size <= start */
    uint64_t ts, commit;
    memcpy(&ts, p + ts_off, 8);
    commit = c_size == 8 ? ({ uint64_t v; memcpy(&v, p + c_off, 8); v; }) : u32(p + c_off);
    Py_ssize_t end = start + (Py_ssize_t)(commit & COMMIT_MASK); /* no overflow: 27 bits past start <= n */
    if (end > n || end > page_size) { reason = "page_header"; goto count; }
    /* from here every read is below end <= n: the loop reads a header word and the u32 after it only at
     * pos <= end - 8, and past that only after checking pos + 4 + len <= end; a record's data may run past
     * end (as in Python), which its handler checks against the page's length */
    if (commit & MISSED_EVENTS) {
        PyObject *count = Py_None;
        Py_INCREF(count);
        if ((commit & MISSED_STORED) && end + c_size <= n) {
            Py_DECREF(count);
            count = c_size == 8 ? PyLong_FromUnsignedLongLong(({ uint64_t v; memcpy(&v, p + end, 8); v; }))
                                : PyLong_FromUnsignedLong(u32(p + end));
            if (!count) return NULL;
        }
        missed = PyObject_CallFunctionObjArgs(lost_type, cpu, count, NULL);
        Py_DECREF(count);
        if (!missed) return NULL;
    }
    Py_ssize_t pos = start, last = end - 8;
    while (pos < end) {
        uint32_t w;
        if (pos > last) {
            w = pos + 4 <= end ? u32(p + pos) : TYPE_TIME_STAMP;
            if ((w & 31) == TYPE_PADDING && !(w >> 5)) break;
            if ((w & 31) == 0 || (w & 31) > TYPE_DATA_MAX || pos + 4 + (Py_ssize_t)(w & 31) * 4 > end) {
                reason = "event_header";
                break;
            }
        }
        w = u32(p + pos);
        unsigned type_len = w & 31;
        if (type_len <= TYPE_DATA_MAX) {
            if (__builtin_add_overflow(ts, (uint64_t)(w >> 5), &ts)) { reason = "event_header"; break; }
            Py_ssize_t data;
            unsigned event_id = u16(p + pos + 4);
            if (type_len) {
                data = pos + 4;
                pos = data + type_len * 4;
            } else {
                data = pos + 8;
                pos += 4 + (Py_ssize_t)u32(p + pos + 4);
                if (pos < data + 4 || pos > end) { reason = "event_header"; break; }
                event_id = u16(p + data);
            }
            PyObject *id = PyLong_FromUnsignedLong(event_id);
            if (!id) goto fail;
            PyObject *handler = PyDict_GetItemWithError(handlers, id);
            Py_DECREF(id);
            if (!handler) {
                if (PyErr_Occurred()) goto fail;
                unknown++;
                continue;
            }
            if (nfound == cap) {
                cap = cap ? cap * 2 : 128;
                Found *grown = PyMem_Realloc(found, cap * sizeof(Found));
                if (!grown) { PyErr_NoMemory(); goto fail; }
                found = grown;
            }
            found[nfound++] = (Found){ts, Py_NewRef(handler), data}; /* Python may run before it is used */
        } else if (type_len == TYPE_TIME_EXTEND) {
            uint64_t hi = u32(p + pos + 4), extend = (hi << 27) + (w >> 5);
            if (__builtin_add_overflow(ts, extend, &ts)) { reason = "event_header"; break; }
            pos += 8;
        } else if (type_len == TYPE_PADDING) {
            if (!(w >> 5)) break;
            pos += 4 + (Py_ssize_t)u32(p + pos + 4);
        } else {
            uint64_t hi = u32(p + pos + 4), stamp = (hi << 27) | (w >> 5);
            ts = (stamp & TS_MSB) ? stamp : (stamp | (ts & TS_MSB));
            pos += 8;
        }
    }
    int to_merge = Py_IS_TYPE(out, &MergeType);
    long c = to_merge ? PyLong_AsLong(cpu) : 0;
    if ((c == -1 && PyErr_Occurred()) || (to_merge && merge_reserve(out, nfound) < 0)) goto fail;
    if (missed && PyList_Append(lost, missed) < 0) goto fail;
    for (Py_ssize_t i = 0; to_merge && i < nfound; i++) /* cannot fail: room was reserved */
        merge_append(out, found[i].ts, found[i].handler, page, found[i].data, c);
    for (Py_ssize_t i = 0; !to_merge && i < nfound; i++) {
        PyObject *item = PyTuple_New(5);
        if (!item) goto fail;
        PyObject *t = PyLong_FromUnsignedLongLong(found[i].ts), *d = PyLong_FromSsize_t(found[i].data);
        if (!t || !d) { Py_XDECREF(t); Py_XDECREF(d); Py_DECREF(item); goto fail; }
        Py_INCREF(found[i].handler); Py_INCREF(page); Py_INCREF(cpu);
        PyTuple_SET_ITEM(item, 0, t); PyTuple_SET_ITEM(item, 1, found[i].handler);
        PyTuple_SET_ITEM(item, 2, page); PyTuple_SET_ITEM(item, 3, d); PyTuple_SET_ITEM(item, 4, cpu);
        int bad = PyList_Append(out, item);
        Py_DECREF(item);
        if (bad < 0) goto fail;
    }
count:
    page_errors = reason != NULL;
    if (unknown && add_error(errors, "unknown_event", unknown) < 0) goto fail;
    if (reason && add_error(errors, reason, 1) < 0) goto fail;
    result = PyLong_FromLong(unknown + page_errors);
    goto fail;
fail:
    for (Py_ssize_t i = 0; i < nfound; i++) Py_DECREF(found[i].handler);
    PyMem_Free(found);
    Py_XDECREF(missed);
    return result;
}

/* run(located, errors, struct_error): each located record (a list of Located tuples, or what
 * Merge.push released) through its handler, as the loop of pipeline.Pipeline.process_located does in
 * Python (a record shorter than its format counts as errors["record"]). Native emitters add their
 * counts once, at the end. */
PyObject *walk_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3 || !(PyList_CheckExact(args[0]) || Py_IS_TYPE(args[0], &ReleasedType)) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "run(located: list | Released, errors: dict, struct_error)");
        return NULL;
    }
    PyObject *located = args[0], *errors = args[1], *struct_error = args[2];
    Released *released = Py_IS_TYPE(located, &ReleasedType) ? (Released *)located : NULL;
    long short_records = 0;
    int failed = 0;
    for (Py_ssize_t i = 0; i < (released ? released->n : PyList_GET_SIZE(located)); i++) {
        PyObject *handler, *item = NULL, *r;
        Entry *e = NULL;
        if (released) {
            e = &released->entries[i];
            handler = e->handler;
        } else {
            item = PyList_GET_ITEM(located, i);
            if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 5) {
                PyErr_SetString(PyExc_TypeError, "a located record is (ts_ns, handler, page, offset, cpu)");
                failed = 1;
                break;
            }
            handler = PyTuple_GET_ITEM(item, 1);
            Py_INCREF(item); /* the handler may run Python code */
        }
        int defer = Py_IS_TYPE(handler, &EmitPlanType); /* its counts are added at the end */
        if (e && defer) {
            r = plan_emit(handler, e->page, e->offset, e->ts, e->cpu, 1);
        } else {
            PyObject *call[4];
            if (e) {
                call[0] = Py_NewRef(e->page); call[1] = PyLong_FromSsize_t(e->offset);
                call[2] = PyLong_FromUnsignedLongLong(e->ts); call[3] = PyLong_FromLong(e->cpu);
            } else {
                call[0] = PyTuple_GET_ITEM(item, 2); call[1] = PyTuple_GET_ITEM(item, 3);
                call[2] = PyTuple_GET_ITEM(item, 0); call[3] = PyTuple_GET_ITEM(item, 4);
            }
            if (!call[1] || !call[2] || !call[3]) r = NULL;
            else if (defer) r = plan_args(handler, call, 1);
            else r = PyObject_Vectorcall(handler, call, 4, NULL);
            if (e) { Py_DECREF(call[0]); Py_XDECREF(call[1]); Py_XDECREF(call[2]); Py_XDECREF(call[3]); }
        }
        Py_XDECREF(item);
        if (r) { Py_DECREF(r); continue; }
        if (!PyErr_ExceptionMatches(struct_error)) { failed = 1; break; }
        PyErr_Clear();
        short_records++;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    if (plan_flush_deferred() < 0) {
        Py_XDECREF(exc_type); Py_XDECREF(exc_value); Py_XDECREF(exc_tb);
        return NULL;
    }
    if (short_records && add_error(errors, "record", short_records) < 0) {
        Py_XDECREF(exc_type); Py_XDECREF(exc_value); Py_XDECREF(exc_tb);
        return NULL;
    }
    PyErr_Restore(exc_type, exc_value, exc_tb);
    if (failed) return NULL;
    Py_RETURN_NONE;
}
