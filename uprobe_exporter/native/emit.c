/* Stage pipeline: the native emitter (the module is defined in module.c): one record of one event, straight from the page bytes, exactly as the record path
 * (unpack.RecordBuilder -> Pipeline._record -> Renderer.render) does for it; that path is the
 * reference, the fallback for anomalies (a record shorter than its format, a timestamp or a derived
 * address out of range: it raises or renders them as usual), and what the tests compare this with byte
 * for byte.
 *
 * Three types:
 *   Clock        the renderer's clock (render.PyClock is its Python twin): the wall-clock offset, the
 *                second whose text is cached, the generation of the process ids (Renderer.forget_pids).
 *   EmitContext  what every emitter of a pipeline writes to (rawemit.Sinks names its slots), named
 *                slots built from keywords: the native Pairing, the counts, the lines, the clock, and the
 *                Python callables it calls where Python owns the state (the renderer's middle fields,
 *                process ids, pod labels, Go pairing keys, the comm cache's decoder, orjson.dumps).
 *   EmitPlan     the emitter of one event: plan(page, offset, ts_ns, cpu). It reads the fields at their
 *                offsets (the ip, ret_ip and pairing sp of RET sites and Go programs derived from hidden
 *                fields, traceline.hidden_values), counts the record, pairs it in the native Pairing
 *                (a USDT return closing only the matching entry), takes its histogram labels (comm,
 *                pods, arguments as str() makes them), observes the duration and renders the JSON line. */
#include "native.h"
#include <stddef.h>
#include <structmember.h>
#include <time.h>

enum { ARG_SIGNED = 0, ARG_UNSIGNED = 1, ARG_STRING = 2, ARG_CHAR = 3, ARG_ARRAY_SIGNED = 4, ARG_ARRAY_UNSIGNED = 5,
       ARG_GOSTRING = 6 };
/* where a histogram label's value comes from (rawemit.LABEL_*) */
enum { LABEL_ARG = 0, LABEL_COMM = 1, LABEL_POD = 2, LABEL_EMPTY = 3, LABEL_ENTRY = 4, LABEL_NONE = 5 };
#define MAX_INLINE_ARGS 16
#define MIDDLES 512 /* per-event cache of the middle fields, direct-mapped by thread */
#define COMM_CACHE 32
#define GO_STACK_TOP ((uint64_t)1 << 62) /* traceline.GO_STACK_TOP */
/* PAIR_LEAVE and PAIR_LEAVE_MATCHING with known_only: a return of a probe whose entries a kernel filter
 * removes; one whose entry was not seen is neither counted nor emitted (the pairing counts it) */
enum { PAIR_NONE = 0, PAIR_ENTER = 1, PAIR_LEAVE = 2, PAIR_LEAVE_MATCHING = 3 };

/* ---- Clock ---------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    long long wall_offset_ns, sec_ns, pid_generation;
    PyObject *sec_text; /* bytes: "2026-11-25T18:11:05." of the second starting at sec_ns */
} Clock;

/* "2026-11-25T18:11:05." of the second `sec` (time.strftime of time.gmtime, as render.PyClock) */
static PyObject *second_text(long long sec) {
    time_t t = (time_t)sec;
    struct tm tm;
    char buf[64];
    size_t len;
    if (!gmtime_r(&t, &tm) || !(len = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S.", &tm))) {
        PyErr_SetString(PyExc_OverflowError, "timestamp out of range");
        return NULL;
    }
    return PyBytes_FromStringAndSize(buf, (Py_ssize_t)len);
}

/* Make the second of wall_ns the cached one, if it is not (render.PyClock.second). */
static int clock_update(Clock *c, long long wall) {
    long long rel;
    if (!__builtin_sub_overflow(wall, c->sec_ns, &rel) && rel >= 0 && rel < 1000000000LL) return 0;
    long long sec = wall / 1000000000LL - (wall % 1000000000LL < 0);
    PyObject *text = second_text(sec);
    if (!text) return -1;
    Py_SETREF(c->sec_text, text);
    c->sec_ns = sec * 1000000000LL;
    return 0;
}

/* "<second's text>NNNNNNZ" */
static PyObject *time_text(PyObject *sec_text, long long rel) {
    char tail[32];
    int len = snprintf(tail, sizeof tail, "%06lldZ", rel / 1000);
    PyObject *out = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(sec_text) + len);
    if (!out) return NULL;
    memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(sec_text), PyBytes_GET_SIZE(sec_text));
    memcpy(PyBytes_AS_STRING(out) + PyBytes_GET_SIZE(sec_text), tail, len);
    return out;
}

static PyObject *Clock_second(Clock *self, PyObject *arg) {
    long long wall = PyLong_AsLongLong(arg);
    if (wall == -1 && PyErr_Occurred()) {
        /* past 63 bits (a timestamp near 2**64 plus the offset): the text, not cached */
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
        PyErr_Clear();
        PyObject *billion = PyLong_FromLongLong(1000000000LL), *qr = billion ? PyNumber_Divmod(arg, billion) : NULL;
        Py_XDECREF(billion);
        if (!qr) return NULL;
        long long sec = PyLong_AsLongLong(PyTuple_GET_ITEM(qr, 0)), rel = PyLong_AsLongLong(PyTuple_GET_ITEM(qr, 1));
        Py_DECREF(qr);
        if (PyErr_Occurred()) return NULL;
        PyObject *text = second_text(sec);
        PyObject *out = text ? time_text(text, rel) : NULL;
        Py_XDECREF(text);
        return out;
    }
    if (clock_update(self, wall) < 0) return NULL;
    return time_text(self->sec_text, wall - self->sec_ns);
}

static PyObject *Clock_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"wall_offset_ns", "sec_ns", "sec_text", "pid_generation", NULL};
    long long offset = 0, sec_ns = -1000000000000000000LL, generation = 0;
    PyObject *text = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|L$LO!L:Clock", names, &offset, &sec_ns, &PyBytes_Type, &text,
                                     &generation))
        return NULL;
    Clock *self = (Clock *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->wall_offset_ns = offset;
    self->sec_ns = sec_ns;
    self->pid_generation = generation;
    self->sec_text = text ? Py_NewRef(text) : PyBytes_FromStringAndSize("", 0);
    if (!self->sec_text) { Py_DECREF(self); return NULL; }
    return (PyObject *)self;
}

static void Clock_dealloc(Clock *self) {
    Py_CLEAR(self->sec_text);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Clock_get_text(Clock *self, void *unused) { return Py_NewRef(self->sec_text); }

static int Clock_set_text(Clock *self, PyObject *value, void *unused) {
    if (!value || !PyBytes_Check(value)) { PyErr_SetString(PyExc_TypeError, "sec_text: bytes"); return -1; }
    Py_SETREF(self->sec_text, Py_NewRef(value));
    return 0;
}

static PyMemberDef Clock_members[] = {
    {"wall_offset_ns", T_LONGLONG, offsetof(Clock, wall_offset_ns), 0, "CLOCK_REALTIME - CLOCK_MONOTONIC"},
    {"sec_ns", T_LONGLONG, offsetof(Clock, sec_ns), 0, "the start of the second whose text is cached"},
    {"pid_generation", T_LONGLONG, offsetof(Clock, pid_generation), 0, "bumped when process ids are forgotten"},
    {NULL},
};

static PyGetSetDef Clock_getset[] = {
    {"sec_text", (getter)Clock_get_text, (setter)Clock_set_text, "the cached second's text", NULL},
    {NULL},
};

static PyMethodDef Clock_methods[] = {
    {"second", (PyCFunction)Clock_second, METH_O, "The time text of wall_ns; its second becomes the cached one."},
    {NULL},
};

PyTypeObject ClockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uprobe_exporter._native.Clock",
    .tp_basicsize = sizeof(Clock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Clock_new,
    .tp_dealloc = (destructor)Clock_dealloc,
    .tp_members = Clock_members,
    .tp_getset = Clock_getset,
    .tp_methods = Clock_methods,
    .tp_doc = "Clock(wall_offset_ns=0, *, sec_ns, sec_text, pid_generation): the renderer's clock (render.PyClock).",
};

/* ---- EmitContext ---------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *pairing;       /* a _native.Pairing */
    PyObject *counts;        /* dict: event name -> records */
    PyObject *negative;      /* dict: probe -> returns paired with a younger entry (counted, never observed) */
    PyObject *lines;         /* a Lines, or a list of bytes */
    PyObject *clock;         /* a Clock, or None: no JSON output */
    PyObject *by_thread;     /* dict: the renderer's middles by (event, tid, comm, cpu, ip, ret_ip) */
    PyObject *thread_middle; /* callable(info, pid, tid, comm, cpu, ip, ret_ip) -> bytes (Renderer) */
    PyObject *tgid_of;       /* callable(tid) -> pid */
    PyObject *comms;         /* dict: thread names by their bytes (rawpage.CommCache) */
    PyObject *new_comm;      /* callable(raw bytes) -> str, caching it in comms */
    PyObject *dumps;         /* orjson.dumps */
    PyObject *pod_label;     /* callable(tid, label) -> str: a k8s_* label's value */
    PyObject *go_key;        /* callable(tid, g) -> int: a goroutine's pairing key (GoroutineKeys.key) */
} EmitContext;

#define CONTEXT_SLOTS(X) X(pairing) X(counts) X(negative) X(lines) X(clock) X(by_thread) X(thread_middle) \
    X(tgid_of) X(comms) X(new_comm) X(dumps) X(pod_label) X(go_key)

static PyObject *Context_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"pairing", "counts", "negative", "lines", "clock", "by_thread", "thread_middle",
                            "tgid_of", "comms", "new_comm", "dumps", "pod_label", "go_key", NULL};
    PyObject *v[13];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$O!O!O!OOOOOO!OOOO:EmitContext", names, &PairingType, &v[0],
                                     &PyDict_Type, &v[1], &PyDict_Type, &v[2], &v[3], &v[4], &v[5], &v[6], &v[7],
                                     &PyDict_Type, &v[8], &v[9], &v[10], &v[11], &v[12]))
        return NULL;
    if (PyTuple_GET_SIZE(args) || !kw || PyDict_GET_SIZE(kw) != 13) {
        PyErr_SetString(PyExc_TypeError, "EmitContext takes all of its slots as keywords");
        return NULL;
    }
    if (!Py_IS_TYPE(v[3], &LinesType) && !PyList_Check(v[3])) {
        PyErr_SetString(PyExc_TypeError, "EmitContext: lines is a Lines or a list");
        return NULL;
    }
    if (v[4] != Py_None && (!Py_IS_TYPE(v[4], &ClockType) || !PyDict_Check(v[5]) || !PyCallable_Check(v[6]))) {
        PyErr_SetString(PyExc_TypeError, "EmitContext: clock is a Clock (with by_thread a dict and thread_middle "
                                         "callable), or None");
        return NULL;
    }
    for (int i = 7; i < 13; i++) {
        if (i != 8 && !PyCallable_Check(v[i])) {
            PyErr_Format(PyExc_TypeError, "EmitContext: %s must be callable", names[i]);
            return NULL;
        }
    }
    EmitContext *self = (EmitContext *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    PyObject **slots[13] = {&self->pairing, &self->counts, &self->negative, &self->lines, &self->clock,
                            &self->by_thread, &self->thread_middle, &self->tgid_of, &self->comms, &self->new_comm,
                            &self->dumps, &self->pod_label, &self->go_key};
    for (int i = 0; i < 13; i++) *slots[i] = Py_NewRef(v[i]);
    return (PyObject *)self;
}

static int Context_traverse(EmitContext *self, visitproc visit, void *arg) {
#define VISIT(x) Py_VISIT(self->x);
    CONTEXT_SLOTS(VISIT)
#undef VISIT
    return 0;
}

static int Context_clear(EmitContext *self) {
#define CLEAR(x) Py_CLEAR(self->x);
    CONTEXT_SLOTS(CLEAR)
#undef CLEAR
    return 0;
}

static void Context_dealloc(EmitContext *self) {
    PyObject_GC_UnTrack(self);
    Context_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Context_members[] = {
#define MEMBER(x) {#x, T_OBJECT, offsetof(EmitContext, x), READONLY, NULL},
    CONTEXT_SLOTS(MEMBER)
#undef MEMBER
    {NULL},
};

PyTypeObject EmitContextType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uprobe_exporter._native.EmitContext",
    .tp_basicsize = sizeof(EmitContext),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Context_new,
    .tp_dealloc = (destructor)Context_dealloc,
    .tp_traverse = (traverseproc)Context_traverse,
    .tp_clear = (inquiry)Context_clear,
    .tp_members = Context_members,
    .tp_doc = "EmitContext(*, pairing, counts, negative, lines, clock, by_thread, thread_middle, tgid_of, comms, "
              "new_comm, dumps, pod_label, go_key): what a pipeline's native emitters write to (rawemit.Sinks).",
};

/* ---- EmitPlan ------------------------------------------------------------------------------------- */

typedef struct {
    PyObject *key; /* bytes: "name": */
    int kind, offset, size, count; /* size: of one element; count: 1 but for arrays */
    int len_offset; /* ARG_GOSTRING: its s64 length (the hidden __len_NAME) */
} Arg;

typedef struct { int source; int index; PyObject *name; } Label; /* name: LABEL_POD's label */

typedef struct {
    int32_t tid;
    long cpu;
    uint64_t ip, ret_ip;
    PyObject *comm, *middle; /* strong references: a cached comm pointer cannot be reused by another */
} Middle;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    EmitContext *ctx;
    PyObject *fallback; /* the record path's handler of this event */
    PyObject *name, *probe, *info, *full_name, *observe, *unknown_comm;
    long long unflushed; /* records counted, not yet added to counts[name] */
    int deferred; /* in the list of plans whose counts run() adds at its end */
    int tid_off, ip_off, ret_ip_off, sp_off, comm_off, fixed_size;
    int sp_ret_off, ret_addr_off, ip_delta_off, g_off, g_hi_off; /* -1 where the event has none */
    int pairing_mode, known_only;
    Py_ssize_t nargs, nentry, nreturn, nwant;
    Arg *args;
    Label *entry_labels, *return_labels, *want;
    /* the last thread name seen, by its bytes (a thread's records come in runs) */
    PyObject *last_comm;
    Py_ssize_t last_comm_len;
    char last_comm_raw[COMM_CACHE];
    /* the middle fields by (tid, comm, cpu, ip, ret_ip), valid for one generation of the clock's pid_generation */
    long long generation;
    Middle middles[MIDDLES];
    HistCache hist;
} EmitPlan;

static PyObject *empty_tuple, *none_text;

static uint64_t load(const unsigned char *p, int size, int is_signed) {
    switch (size) {
    case 1: return is_signed ? (uint64_t)(int64_t)(int8_t)p[0] : p[0];
    case 2: { uint16_t v; memcpy(&v, p, 2); return is_signed ? (uint64_t)(int64_t)(int16_t)v : v; }
    case 4: { uint32_t v; memcpy(&v, p, 4); return is_signed ? (uint64_t)(int64_t)(int32_t)v : v; }
    default: { uint64_t v; memcpy(&v, p, 8); return v; }
    }
}

/* A __data_loc string's bytes as Python slices them: p[o + start : o + start + len - 1], clamped. */
static void slice(Py_ssize_t n, Py_ssize_t o, uint32_t loc, Py_ssize_t *from, Py_ssize_t *to) {
    Py_ssize_t a = o + (loc & 0xffff), b = a + (loc >> 16) - 1;
    *from = a < n ? a : n;
    *to = b < n ? b : n;
    if (*to < *from) *to = *from;
}

/* A line being rendered: into a Lines' buffer (target), or into inline_buf, for a list of bytes */
typedef struct { char *buf; Py_ssize_t len, cap; Lines *target; char inline_buf[1024]; } Out;

static int grow(Out *o, Py_ssize_t n) {
    if (o->target) {
        if (lines_reserve(o->target, o->len + n) < 0) return -1;
        o->buf = o->target->buf;
        o->cap = o->target->cap;
        return 0;
    }
    Py_ssize_t cap = (o->len + n) * 2;
    char *b = o->buf == o->inline_buf ? PyMem_Malloc(cap) : PyMem_Realloc(o->buf, cap);
    if (!b) { PyErr_NoMemory(); return -1; }
    if (o->buf == o->inline_buf) memcpy(b, o->inline_buf, o->len);
    o->buf = b; o->cap = cap;
    return 0;
}

/* inlined: most pieces are constants, whose copy the compiler then makes a few moves */
static inline __attribute__((always_inline)) int put(Out *o, const char *s, Py_ssize_t n) {
    if (o->len + n > o->cap && grow(o, n) < 0) return -1;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return 0;
}

static int put_bytes(Out *o, PyObject *b) { return put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)); }

static const char DIGITS[] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                             "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                             "8081828384858687888990919293949596979899";

/* Decimal digits of v (with a '-' when negative and signed), at least `width` digits, zero-padded. */
static int put_int(Out *o, uint64_t v, int is_signed, int width) {
    char tmp[24], *end = tmp + sizeof tmp, *q = end;
    int negative = is_signed && (int64_t)v < 0;
    uint64_t u = negative ? (uint64_t)0 - v : v;
    while (u >= 100) { /* two digits at a time */
        q -= 2;
        memcpy(q, DIGITS + 2 * (u % 100), 2);
        u /= 100;
    }
    if (u >= 10) { q -= 2; memcpy(q, DIGITS + 2 * u, 2); }
    else *--q = (char)('0' + u);
    while (end - q < width) *--q = '0';
    if (negative) *--q = '-';
    return put(o, q, end - q);
}

#define PUTS(o, s) put((o), (s), (Py_ssize_t)(sizeof(s) - 1))

/* dict[key] += n, for the pipeline's counters (dicts of ints); KeyError if the key is not there. */
static int dict_add(PyObject *dict, PyObject *key, long long n) {
    PyObject *old = PyDict_GetItemWithError(dict, key);
    if (!old) { if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key); return -1; }
    PyObject *inc = PyLong_FromLongLong(n), *now = inc ? PyNumber_Add(old, inc) : NULL;
    int bad = !now || PyDict_SetItem(dict, key, now) < 0;
    Py_XDECREF(inc); Py_XDECREF(now);
    return bad ? -1 : 0;
}

int add_error(PyObject *errors, const char *reason, long long n) {
    PyObject *key = PyUnicode_FromString(reason);
    int bad = !key || dict_add(errors, key, n) < 0;
    Py_XDECREF(key);
    return bad ? -1 : 0;
}

/* Add the records counted since the last flush to counts[name]. */
static int flush_count(EmitPlan *self) {
    if (!self->unflushed) return 0;
    if (dict_add(self->ctx->counts, self->name, self->unflushed) < 0) return -1;
    self->unflushed = 0;
    return 0;
}

/* The plans that deferred their counts since the last plan_flush_deferred() (strong references). */
static EmitPlan **deferred;
static Py_ssize_t ndeferred, capdeferred;

static int defer_count(EmitPlan *self) {
    if (self->deferred) return 0;
    if (ndeferred == capdeferred) {
        Py_ssize_t cap = capdeferred ? capdeferred * 2 : 64;
        EmitPlan **grown = PyMem_Realloc(deferred, cap * sizeof *grown);
        if (!grown) { PyErr_NoMemory(); return -1; }
        deferred = grown;
        capdeferred = cap;
    }
    deferred[ndeferred++] = (EmitPlan *)Py_NewRef(self);
    self->deferred = 1;
    return 0;
}

/* Count one record: run() adds a batch's counts at its end (defer); a call from Python counts at once. */
static inline int count_record(EmitPlan *self, int defer) {
    if (defer && defer_count(self) < 0) return -1;
    self->unflushed++;
    return defer ? 0 : flush_count(self);
}

int plan_flush_deferred(void) {
    int bad = 0;
    for (Py_ssize_t i = 0; i < ndeferred; i++) {
        EmitPlan *plan = deferred[i];
        if (!bad && flush_count(plan) < 0) bad = 1; /* the first error is the one raised */
        plan->deferred = 0;
        Py_DECREF(plan);
    }
    ndeferred = 0;
    return bad ? -1 : 0;
}

/* The record path, for what C does not hold (it raises struct.error for a short record). */
static __attribute__((noinline, cold)) PyObject *fallback(EmitPlan *self, PyObject *page, Py_ssize_t o, uint64_t ts,
                                                          long cpu) {
    PyObject *args[4] = {page, PyLong_FromSsize_t(o), PyLong_FromUnsignedLongLong(ts), PyLong_FromLong(cpu)};
    PyObject *r = args[1] && args[2] && args[3] ? PyObject_Vectorcall(self->fallback, args, 4, NULL) : NULL;
    Py_XDECREF(args[1]); Py_XDECREF(args[2]); Py_XDECREF(args[3]);
    return r;
}

/* A record's argument as the record path's builder makes it (rawpage._value_expr): an int, a str or
 * None (a string whose fetch faulted, a Go string of negative length), a list of ints. New reference. */
static PyObject *arg_value(const Arg *a, PyObject *page, Py_ssize_t o, const unsigned char *p) {
    switch (a->kind) {
    case ARG_SIGNED: return PyLong_FromLongLong((long long)load(p + a->offset, a->size, 1));
    case ARG_UNSIGNED: return PyLong_FromUnsignedLongLong(load(p + a->offset, a->size, 0));
    case ARG_CHAR: { /* rawpage._char: the byte as '%c' prints it */
        unsigned char c = p[a->offset];
        return c < 0x80 ? PyUnicode_FromOrdinal(c) : PyUnicode_DecodeUTF8((const char *)&c, 1, "backslashreplace");
    }
    case ARG_STRING: {
        uint32_t loc = (uint32_t)load(p + a->offset, 4, 0);
        if (!(loc >> 16)) Py_RETURN_NONE; /* faulted */
        Py_ssize_t from, to;
        slice(PyBytes_GET_SIZE(page), o, loc, &from, &to);
        return PyUnicode_DecodeUTF8(PyBytes_AS_STRING(page) + from, to - from, "backslashreplace");
    }
    case ARG_GOSTRING: { /* traceline.go_string: the words' bytes up to the length */
        long long len = (long long)load(p + a->len_offset, 8, 1);
        if (len < 0) Py_RETURN_NONE;
        long long most = (long long)a->count * 8;
        return PyUnicode_DecodeUTF8((const char *)p + a->offset, len < most ? len : most, "backslashreplace");
    }
    default: { /* arrays */
        PyObject *list = PyList_New(a->count);
        if (!list) return NULL;
        for (int k = 0; k < a->count; k++) {
            uint64_t v = load(p + a->offset + k * a->size, a->size, a->kind == ARG_ARRAY_SIGNED);
            PyObject *x = a->kind == ARG_ARRAY_SIGNED ? PyLong_FromLongLong((long long)v) : PyLong_FromUnsignedLongLong(v);
            if (!x) { Py_DECREF(list); return NULL; }
            PyList_SET_ITEM(list, k, x);
        }
        return list;
    }
    }
}

/* What one record's emission holds while it runs */
typedef struct {
    EmitPlan *plan;
    PyObject *page;
    Py_ssize_t o;
    const unsigned char *p;
    int32_t tid;
    PyObject *tid_o, *comm;
    PyObject **values; /* the arguments' values, made when first needed */
} Rec;

static PyObject *rec_value(Rec *r, Py_ssize_t i) { /* borrowed */
    if (!r->values[i]) r->values[i] = arg_value(&r->plan->args[i], r->page, r->o, r->p);
    return r->values[i];
}

static PyObject *rec_tid(Rec *r) { /* borrowed */
    if (!r->tid_o) r->tid_o = PyLong_FromLong(r->tid);
    return r->tid_o;
}

/* The label values of `spec` (pipeline._label_values, _wanted): a new tuple. */
static __attribute__((noinline)) PyObject *label_values(Rec *r, const Label *spec, Py_ssize_t n, PyObject *entry) {
    if (!n) return Py_NewRef(empty_tuple);
    PyObject *out = PyTuple_New(n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        const Label *l = &spec[i];
        PyObject *v = NULL, *x;
        switch (l->source) {
        case LABEL_ARG: v = (x = rec_value(r, l->index)) ? PyObject_Str(x) : NULL; break;
        case LABEL_COMM: v = Py_NewRef(r->comm); break;
        case LABEL_POD: {
            PyObject *tid = rec_tid(r);
            if (tid) {
                PyObject *call[2] = {tid, l->name};
                v = PyObject_Vectorcall(r->plan->ctx->pod_label, call, 2, NULL);
            }
            break;
        }
        case LABEL_EMPTY: v = PyUnicode_FromStringAndSize("", 0); break;
        case LABEL_ENTRY:
            if (!PyTuple_Check(entry) || l->index >= PyTuple_GET_SIZE(entry)) {
                PyErr_SetString(PyExc_IndexError, "the entry's label values have no such item");
            } else {
                v = Py_NewRef(PyTuple_GET_ITEM(entry, l->index));
            }
            break;
        default: v = Py_NewRef(Py_None);
        }
        if (!v) { Py_DECREF(out); return NULL; }
        PyTuple_SET_ITEM(out, i, v);
    }
    return out;
}

/* One record: the page, the record's offset in it, its timestamp and CPU; `defer`: count it at run()'s
 * end. Returns None (a new reference), or NULL with an exception set. */
PyObject *plan_emit(PyObject *plan, PyObject *page, Py_ssize_t o, uint64_t ts_u, long cpu, int defer) {
    EmitPlan *self = (EmitPlan *)plan;
    EmitContext *ctx = self->ctx;
    if (!ctx || !ctx->pairing) { PyErr_SetString(PyExc_RuntimeError, "EmitPlan: cleared"); return NULL; }
    Clock *clock = ctx->clock != Py_None ? (Clock *)ctx->clock : NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(page);
    if (o < 0 || o > n - self->fixed_size || ts_u > (uint64_t)LLONG_MAX) /* the record path raises struct.error */
        return fallback(self, page, o, ts_u, cpu);
    long long ts = (long long)ts_u;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(page) + o;
    long long wall = 0;
    if (clock && (__builtin_add_overflow(ts, clock->wall_offset_ns, &wall) || wall < 0))
        return fallback(self, page, o, ts_u, cpu);
    int32_t tid = (int32_t)load(p + self->tid_off, 4, 1);
    uint64_t ip = load(p + self->ip_off, 8, 0);
    uint64_t ret_ip = self->ret_ip_off >= 0 ? load(p + self->ret_ip_off, 8, 0) : 0;
    /* traceline.hidden_values: RET sites' and Go programs' ip, ret_ip, pairing sp and key */
    uint64_t sp = 0, g = 0;
    if (self->ip_delta_off >= 0) {
        uint64_t delta = load(p + self->ip_delta_off, 4, 0);
        if (delta > ip) return fallback(self, page, o, ts_u, cpu); /* a negative ip */
        ip -= delta;
    }
    if (self->ret_addr_off >= 0) ret_ip = load(p + self->ret_addr_off, 8, 0);
    if (self->sp_off >= 0 || self->sp_ret_off >= 0) {
        uint64_t at_ret = self->sp_off >= 0 ? 0 : 8; /* at a RET, %sp points at the return address */
        sp = load(p + (self->sp_off >= 0 ? self->sp_off : self->sp_ret_off), 8, 0);
        if (self->g_off >= 0) {
            uint64_t hi = load(p + self->g_hi_off, 8, 0);
            g = load(p + self->g_off, 8, 0);
            if (hi) { /* GO_STACK_TOP - hi + sp + at_ret, if it is a u64 */
                uint64_t top;
                if (__builtin_add_overflow(GO_STACK_TOP, sp, &top) || __builtin_add_overflow(top, at_ret, &top)
                    || top < hi)
                    return fallback(self, page, o, ts_u, cpu);
                sp = top - hi;
            } else {
                sp = 0; /* %r14 was not a g: pair by order */
            }
        } else if (__builtin_add_overflow(sp, at_ret, &sp)) {
            return fallback(self, page, o, ts_u, cpu);
        }
    }

    PyObject *frame_extra = NULL, *labels = NULL, *result = NULL, *middle = NULL, *line = NULL, *key = NULL;
    PyObject *inline_values[MAX_INLINE_ARGS];
    Rec r = {self, page, o, p, tid, NULL, NULL, inline_values};
    if (self->nargs > MAX_INLINE_ARGS) {
        if (!(r.values = PyMem_Calloc(self->nargs, sizeof(PyObject *)))) return PyErr_NoMemory();
    } else if (self->nargs) {
        memset(inline_values, 0, self->nargs * sizeof(PyObject *));
    }
    long long duration = 0;
    int has_duration = 0;
    Out out;
    out.buf = out.inline_buf;
    out.len = 0;
    out.cap = sizeof out.inline_buf;
    out.target = NULL;

    if (self->comm_off >= 0) {
        uint32_t loc = (uint32_t)load(p + self->comm_off, 4, 0);
        if (loc >> 16) {
            Py_ssize_t a, b;
            slice(n, o, loc, &a, &b);
            const char *bytes = PyBytes_AS_STRING(page) + a;
            if (self->last_comm && b - a == self->last_comm_len && memcmp(bytes, self->last_comm_raw, b - a) == 0) {
                r.comm = Py_NewRef(self->last_comm);
            } else {
                PyObject *raw = PyBytes_FromStringAndSize(bytes, b - a);
                if (!raw) goto done;
                r.comm = PyDict_GetItemWithError(ctx->comms, raw);
                if (r.comm) Py_INCREF(r.comm);
                else if (!PyErr_Occurred()) r.comm = PyObject_CallOneArg(ctx->new_comm, raw);
                Py_DECREF(raw);
                if (!r.comm) goto done;
                if (b - a <= COMM_CACHE) {
                    Py_XSETREF(self->last_comm, Py_NewRef(r.comm));
                    self->last_comm_len = b - a;
                    memcpy(self->last_comm_raw, bytes, b - a);
                }
            }
        }
    }
    if (!r.comm) r.comm = Py_NewRef(self->unknown_comm);
    /* count: run() adds a batch's counts at its end; a call from Python counts at once (a return of a
     * probe with filtered entries: once its entry is found) */
    if (!self->known_only && count_record(self, defer) < 0) goto done;
    if (self->pairing_mode != PAIR_NONE) {
        long long pair_key = tid; /* the thread, or a Go program's goroutine in its process */
        if (g && self->pairing_mode != PAIR_LEAVE_MATCHING) {
            PyObject *g_o = PyLong_FromUnsignedLongLong(g), *k = NULL;
            if (g_o && rec_tid(&r)) {
                PyObject *call[2] = {r.tid_o, g_o};
                k = PyObject_Vectorcall(ctx->go_key, call, 2, NULL);
            }
            Py_XDECREF(g_o);
            if (!k) goto done;
            pair_key = PyLong_AsLongLong(k);
            Py_DECREF(k);
            if (pair_key == -1 && PyErr_Occurred()) goto done;
        }
        if (self->pairing_mode == PAIR_ENTER) {
            /* label values are taken at the entry (comm, the entry's args) and travel with the frame */
            PyObject *extra = self->nentry ? label_values(&r, self->entry_labels, self->nentry, NULL)
                                           : Py_NewRef(empty_tuple);
            if (!extra) goto done;
            int bad = pairing_enter(ctx->pairing, self->probe, pair_key, sp, ts, extra) < 0;
            Py_DECREF(extra);
            if (bad) goto done;
        } else {
            CFrame entry;
            int found;
            if (self->pairing_mode == PAIR_LEAVE_MATCHING) {
                PyObject *want = label_values(&r, self->want, self->nwant, NULL);
                if (!want) goto done;
                found = pairing_leave_matching_c(ctx->pairing, self->probe, tid, want, &entry);
                Py_DECREF(want);
            } else {
                found = pairing_leave_c(ctx->pairing, self->probe, pair_key, sp, &entry);
            }
            if (found < 0) goto done;
            if (found) frame_extra = entry.extra; /* the reference the stack held */
            if (self->known_only) {
                if (!found) { result = Py_NewRef(Py_None); goto done; } /* its entry was filtered */
                if (count_record(self, defer) < 0) goto done;
            }
            if (found && ts < entry.ts) { /* only records out of order can do this: counted, never observed */
                if (dict_add(ctx->negative, self->probe, 1) < 0) goto done;
            } else if (found) {
                duration = ts - entry.ts;
                has_duration = 1;
                if (self->observe != Py_None) {
                    labels = self->nreturn ? label_values(&r, self->return_labels, self->nreturn, frame_extra)
                                           : Py_NewRef(frame_extra);
                    if (!labels) goto done;
                    int observed = hist_observe(&self->hist, labels, duration);
                    if (observed < 0) goto done;
                    if (!observed) { /* a label set without its series yet: ProbeHistograms.observe */
                        PyObject *d = PyLong_FromLongLong(duration);
                        if (!d) goto done;
                        PyObject *obs[2] = {labels, d};
                        PyObject *res = PyObject_Vectorcall(self->observe, obs, 2, NULL);
                        Py_DECREF(d);
                        if (!res) goto done;
                        Py_DECREF(res);
                    }
                }
            }
        }
    }
    if (!clock) { result = Py_NewRef(Py_None); goto done; }
    /* the values of the string arguments, serialized (before the line is started: this runs Python) */
    for (Py_ssize_t i = 0; i < self->nargs; i++) {
        int kind = self->args[i].kind;
        if (kind != ARG_STRING && kind != ARG_CHAR && kind != ARG_GOSTRING) continue;
        PyObject *v = rec_value(&r, i);
        if (!v) goto done;
        PyObject *text = v == Py_None ? Py_NewRef(none_text) : PyObject_CallOneArg(ctx->dumps, v);
        if (!text) goto done;
        if (!PyBytes_Check(text)) { Py_DECREF(text); PyErr_SetString(PyExc_TypeError, "dumps must return bytes"); goto done; }
        Py_SETREF(r.values[i], text);
    }
    {
        if (clock->pid_generation != self->generation) {  /* Renderer.forget_pids: process ids may have changed */
            for (int i = 0; i < MIDDLES; i++) { Py_CLEAR(self->middles[i].comm); Py_CLEAR(self->middles[i].middle); }
            self->generation = clock->pid_generation;
        }
        uint64_t h = ((uint64_t)(uint32_t)tid * 0x9E3779B97F4A7C15ULL) ^ (ip * 0xC2B2AE3D27D4EB4FULL) ^ ret_ip ^ (uint64_t)cpu;
        Middle *m = &self->middles[(h ^ (h >> 32)) & (MIDDLES - 1)];
        if (m->middle && m->tid == tid && m->cpu == cpu && m->ip == ip && m->ret_ip == ret_ip && m->comm == r.comm) {
            middle = Py_NewRef(m->middle);
        } else {
            if (!rec_tid(&r)) goto done;
            PyObject *cpu_o = PyLong_FromLong(cpu), *ip_o = PyLong_FromUnsignedLongLong(ip);
            PyObject *ret_o = PyLong_FromUnsignedLongLong(ret_ip);
            if (cpu_o && ip_o && ret_o) key = PyTuple_Pack(6, self->full_name, r.tid_o, r.comm, cpu_o, ip_o, ret_o);
            if (key) {
                middle = PyDict_GetItemWithError(ctx->by_thread, key);
                if (middle) Py_INCREF(middle);
                else if (!PyErr_Occurred()) {
                    PyObject *pid = PyObject_CallOneArg(ctx->tgid_of, r.tid_o);
                    if (pid) {
                        PyObject *call[7] = {self->info, pid, r.tid_o, r.comm, cpu_o, ip_o, ret_o};
                        middle = PyObject_Vectorcall(ctx->thread_middle, call, 7, NULL);
                        Py_DECREF(pid);
                    }
                }
            }
            Py_XDECREF(cpu_o); Py_XDECREF(ip_o); Py_XDECREF(ret_o);
            if (!middle) goto done;
            if (!PyBytes_Check(middle)) { PyErr_SetString(PyExc_TypeError, "middle"); goto done; }
            Py_XSETREF(m->comm, Py_NewRef(r.comm));
            Py_XSETREF(m->middle, Py_NewRef(middle));
            m->tid = tid; m->cpu = cpu; m->ip = ip; m->ret_ip = ret_ip;
        }
    }
    /* the second's text, once the Python code above (dumps, thread_middle) has run */
    if (clock_update(clock, wall) < 0) goto done;
    long long rel = wall - clock->sec_ns;
    PyObject *sec_text = clock->sec_text;
    if (Py_IS_TYPE(ctx->lines, &LinesType)) { /* from here on no Python code runs until the line is done */
        out.target = (Lines *)ctx->lines;
        out.buf = out.target->buf;
        out.len = out.target->len;
        out.cap = out.target->cap;
    }
    int ok = PUTS(&out, "{\"time\":\"") == 0 && put_bytes(&out, sec_text) == 0
             && put_int(&out, (uint64_t)(rel / 1000), 0, 6) == 0 && PUTS(&out, "Z\",\"ts_ns\":") == 0
             && put_int(&out, (uint64_t)wall, 0, 1) == 0 && PUTS(&out, ",") == 0 && put_bytes(&out, middle) == 0
             && PUTS(&out, ",\"args\":{") == 0;
    if (!ok) goto done;
    for (Py_ssize_t i = 0; i < self->nargs; i++) {
        Arg *a = &self->args[i];
        if ((i && PUTS(&out, ",") < 0) || put_bytes(&out, a->key) < 0) goto done;
        if (a->kind == ARG_STRING || a->kind == ARG_CHAR || a->kind == ARG_GOSTRING) {
            if (put_bytes(&out, r.values[i]) < 0) goto done;
        } else if (a->kind == ARG_ARRAY_SIGNED || a->kind == ARG_ARRAY_UNSIGNED) { /* as orjson: [1,2,3] */
            int is_signed = a->kind == ARG_ARRAY_SIGNED;
            if (PUTS(&out, "[") < 0) goto done;
            for (int k = 0; k < a->count; k++) {
                if ((k && PUTS(&out, ",") < 0)
                    || put_int(&out, load(p + a->offset + k * a->size, a->size, is_signed), is_signed, 1) < 0)
                    goto done;
            }
            if (PUTS(&out, "]") < 0) goto done;
        } else if (put_int(&out, load(p + a->offset, a->size, a->kind == ARG_SIGNED), a->kind == ARG_SIGNED, 1) < 0) {
            goto done;
        }
    }
    if (PUTS(&out, "}") < 0) goto done;
    if (has_duration) {
        if (PUTS(&out, ",\"duration_ns\":") < 0 || put_int(&out, (uint64_t)duration, 1, 1) < 0) goto done;
    }
    if (PUTS(&out, "}\n") < 0) goto done;
    if (out.target) {
        out.target->len = out.len;
        out.target->count++;
    } else {
        line = PyBytes_FromStringAndSize(out.buf, out.len);
        if (!line || PyList_Append(ctx->lines, line) < 0) goto done;
    }
    result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < self->nargs; i++) Py_XDECREF(r.values[i]);
    if (r.values != inline_values) PyMem_Free(r.values);
    if (!out.target && out.buf != out.inline_buf) PyMem_Free(out.buf);
    Py_XDECREF(r.comm); Py_XDECREF(r.tid_o); Py_XDECREF(frame_extra); Py_XDECREF(labels);
    Py_XDECREF(middle); Py_XDECREF(line); Py_XDECREF(key);
    return result;
}

/* plan(page, offset, ts_ns, cpu) with Python arguments */
PyObject *plan_args(PyObject *plan, PyObject *const *args, int defer) {
    if (!PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "EmitPlan(page: bytes, offset, ts_ns, cpu)");
        return NULL;
    }
    Py_ssize_t o = PyLong_AsSsize_t(args[1]);
    long long ts = PyLong_AsLongLong(args[2]);
    long cpu = PyLong_AsLong(args[3]);
    if (PyErr_Occurred() || ts < 0) { /* what C does not hold: the record path */
        PyErr_Clear();
        EmitPlan *self = (EmitPlan *)plan;
        if (!self->fallback) { PyErr_SetString(PyExc_RuntimeError, "EmitPlan: cleared"); return NULL; }
        return PyObject_Vectorcall(self->fallback, args, 4, NULL);
    }
    return plan_emit(plan, args[0], o, (uint64_t)ts, cpu, defer);
}

static PyObject *plan_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 4 || kwnames) {
        PyErr_SetString(PyExc_TypeError, "EmitPlan(page: bytes, offset, ts_ns, cpu)");
        return NULL;
    }
    return plan_args(callable, args, 0);
}

static void free_labels(Label *labels, Py_ssize_t n) {
    for (Py_ssize_t i = 0; labels && i < n; i++) Py_CLEAR(labels[i].name);
    PyMem_Free(labels);
}

static int plan_clear(EmitPlan *self) {
    Py_CLEAR(self->ctx); Py_CLEAR(self->fallback); Py_CLEAR(self->info); Py_CLEAR(self->observe);
    hist_clear(&self->hist);
    return 0;
}

static void plan_dealloc(EmitPlan *self) {
    PyObject_GC_UnTrack(self);
    plan_clear(self);
    Py_CLEAR(self->name); Py_CLEAR(self->probe); Py_CLEAR(self->full_name); Py_CLEAR(self->unknown_comm);
    Py_CLEAR(self->last_comm);
    for (int i = 0; i < MIDDLES; i++) { Py_CLEAR(self->middles[i].comm); Py_CLEAR(self->middles[i].middle); }
    for (Py_ssize_t i = 0; self->args && i < self->nargs; i++) Py_CLEAR(self->args[i].key);
    PyMem_Free(self->args);
    free_labels(self->entry_labels, self->nentry);
    free_labels(self->return_labels, self->nreturn);
    free_labels(self->want, self->nwant);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int plan_traverse(EmitPlan *self, visitproc visit, void *arg) {
    Py_VISIT(self->ctx); Py_VISIT(self->fallback); Py_VISIT(self->info); Py_VISIT(self->observe);
    Py_VISIT(self->hist.series); Py_VISIT(self->hist.labels); Py_VISIT(self->hist.last);
    return 0;
}

/* A label spec: ((source, index or label name), ...) -> n Labels; index < nargs for LABEL_ARG. */
static int parse_labels(PyObject *spec, Py_ssize_t nargs, Label **out, Py_ssize_t *n) {
    if (!PyTuple_Check(spec)) { PyErr_SetString(PyExc_TypeError, "a label spec is a tuple"); return -1; }
    *n = PyTuple_GET_SIZE(spec);
    *out = PyMem_Calloc(*n ? *n : 1, sizeof(Label));
    if (!*out) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < *n; i++) {
        Label *l = &(*out)[i];
        PyObject *item = PyTuple_GET_ITEM(spec, i), *arg;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) { PyErr_SetString(PyExc_TypeError, "(source, arg)"); return -1; }
        l->source = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
        arg = PyTuple_GET_ITEM(item, 1);
        if (l->source == LABEL_POD) {
            if (!PyUnicode_Check(arg)) { PyErr_SetString(PyExc_TypeError, "a pod label's name"); return -1; }
            l->name = Py_NewRef(arg);
        } else {
            l->index = PyLong_AsLong(arg);
        }
        if (PyErr_Occurred()) return -1;
        if (l->source < LABEL_ARG || l->source > LABEL_NONE || l->index < 0 || (l->source == LABEL_ARG && l->index >= nargs)) {
            PyErr_SetString(PyExc_ValueError, "bad label source");
            return -1;
        }
    }
    return 0;
}

/* EmitPlan(context, fallback, *, name, probe, info, full_name, series, observe, tid_offset, ip_offset,
 *          ret_ip_offset, sp_offset, comm_offset, fixed_size, sp_ret_offset, ret_addr_offset, ip_delta_offset,
 *          g_offset, g_hi_offset, args, pairing, known_only, entry_labels, return_labels, want)
 *   fallback: the record path's handler of the event (page, offset, ts_ns, cpu)
 *   series, observe: the probe's series table (ProbeHistograms.series: label values -> series) and its
 *            ProbeHistograms.observe (for label sets without a native series yet), or None
 *   *_offset: where each field is in the record, -1 where the event has none (tid and ip it always has);
 *            fixed_size: the record's fixed part (struct.calcsize of its layout), which every offset lies in
 *   args = ((key_bytes, kind, offset, element size, count, length offset), ...)
 *   pairing: PAIR_*; known_only: a return is emitted only if its entry was seen (an entry filter)
 *   entry_labels, return_labels, want: ((LABEL_*, argument index or pod label name), ...) */
static PyObject *plan_new(PyTypeObject *type, PyObject *a, PyObject *kw) {
    static char *names[] = {"context", "fallback", "name", "probe", "info", "full_name", "series", "observe",
                            "tid_offset", "ip_offset", "ret_ip_offset", "sp_offset", "comm_offset", "fixed_size",
                            "sp_ret_offset", "ret_addr_offset", "ip_delta_offset", "g_offset", "g_hi_offset",
                            "args", "pairing", "known_only", "entry_labels", "return_labels", "want", NULL};
    PyObject *context, *fallback_, *name, *probe, *info, *full_name, *series, *observe, *args;
    PyObject *entry_labels, *return_labels, *want;
    int pairing, known_only, off[11];
    if (!PyArg_ParseTupleAndKeywords(a, kw, "O!O$UUOUOOiiiiiiiiiiiO!ipOOO:EmitPlan", names, &EmitContextType, &context,
                                     &fallback_, &name, &probe, &info, &full_name, &series, &observe, &off[0], &off[1],
                                     &off[2], &off[3], &off[4], &off[5], &off[6], &off[7], &off[8], &off[9], &off[10],
                                     &PyTuple_Type, &args, &pairing, &known_only, &entry_labels, &return_labels, &want))
        return NULL;
    if (!PyCallable_Check(fallback_) || (observe != Py_None && !PyCallable_Check(observe))) {
        PyErr_SetString(PyExc_TypeError, "EmitPlan: fallback and observe are callables");
        return NULL;
    }
    EmitPlan *self = (EmitPlan *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->vectorcall = plan_call;
    self->ctx = (EmitContext *)Py_NewRef(context);
    self->fallback = Py_NewRef(fallback_);
    self->name = Py_NewRef(name);
    self->probe = Py_NewRef(probe);
    self->info = Py_NewRef(info);
    self->full_name = Py_NewRef(full_name);
    self->observe = Py_NewRef(observe);
    self->pairing_mode = pairing;
    self->known_only = known_only;
    self->generation = -1;
    if (!(self->unknown_comm = PyUnicode_FromString("<...>"))) goto fail;
    self->tid_off = off[0], self->ip_off = off[1], self->ret_ip_off = off[2], self->sp_off = off[3];
    self->comm_off = off[4], self->fixed_size = off[5], self->sp_ret_off = off[6], self->ret_addr_off = off[7];
    self->ip_delta_off = off[8], self->g_off = off[9], self->g_hi_off = off[10];
    /* the probe's ProbeHistograms: its series, for the label sets that have one (histogram.c) */
    if (hist_init(&self->hist, observe != Py_None ? series : Py_None) < 0) goto fail;
    self->nargs = PyTuple_GET_SIZE(args);
    self->args = PyMem_Calloc(self->nargs ? self->nargs : 1, sizeof(Arg));
    if (!self->args) { PyErr_NoMemory(); goto fail; }
    for (Py_ssize_t i = 0; i < self->nargs; i++) {
        Arg *arg = &self->args[i];
        PyObject *key;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(args, i), "O!iiiii", &PyBytes_Type, &key, &arg->kind, &arg->offset,
                              &arg->size, &arg->count, &arg->len_offset))
            goto fail;
        arg->key = Py_NewRef(key);
        int gostring = arg->kind == ARG_GOSTRING;
        if (arg->kind < ARG_SIGNED || arg->kind > ARG_GOSTRING || (arg->size != 1 && arg->size != 2 &&
            arg->size != 4 && arg->size != 8) || arg->count < 1 || (arg->count > 1 && arg->kind < ARG_ARRAY_SIGNED)
            || (arg->kind == ARG_STRING && arg->size != 4) || (arg->kind == ARG_CHAR && arg->size != 1)
            || (gostring && (arg->size != 8 || arg->len_offset < 0 || arg->len_offset + 8 > self->fixed_size))
            || arg->offset < 0 || arg->offset + (Py_ssize_t)arg->size * arg->count > self->fixed_size) {
            PyErr_SetString(PyExc_ValueError, "bad argument field");
            goto fail;
        }
    }
    if (parse_labels(entry_labels, self->nargs, &self->entry_labels, &self->nentry) < 0
        || parse_labels(return_labels, self->nargs, &self->return_labels, &self->nreturn) < 0
        || parse_labels(want, self->nargs, &self->want, &self->nwant) < 0)
        goto fail;
    int offsets[] = {self->ret_ip_off, self->sp_off, self->sp_ret_off, self->ret_addr_off, self->g_off, self->g_hi_off};
    int bad = self->tid_off < 0 || self->ip_off < 0 || self->tid_off + 4 > self->fixed_size
              || self->ip_off + 8 > self->fixed_size || self->comm_off + 4 > self->fixed_size
              || self->ip_delta_off + 4 > self->fixed_size || (self->g_off >= 0) != (self->g_hi_off >= 0)
              || pairing < PAIR_NONE || pairing > PAIR_LEAVE_MATCHING;
    for (int i = 0; i < 6; i++) bad |= offsets[i] + 8 > self->fixed_size;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "bad field offsets");
        goto fail;
    }
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

PyTypeObject EmitPlanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uprobe_exporter._native.EmitPlan",
    .tp_basicsize = sizeof(EmitPlan),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = plan_new,
    .tp_dealloc = (destructor)plan_dealloc,
    .tp_traverse = (traverseproc)plan_traverse,
    .tp_clear = (inquiry)plan_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(EmitPlan, vectorcall),
    .tp_doc = "A native emitter for one event (see rawemit.native_emitter).",
};

int plan_module_init(void) {
    if (!empty_tuple) empty_tuple = PyTuple_New(0); /* once per process: the module may be executed again */
    if (!none_text) none_text = PyBytes_FromString("null");
    return empty_tuple && none_text ? 0 : -1;
}
