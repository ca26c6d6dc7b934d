/* Native emitter (the module is defined in module.c): one record of one event, straight from the page bytes, exactly as the emitter that
 * rawemit.py generates in Python for the same event (which stays the reference, the fallback for what
 * this does not cover, and what the tests compare this with byte for byte).
 *
 * An EmitPlan is called like the Python emitter: plan(page, offset, ts_ns, cpu). It reads the fields
 * at their offsets, decodes the thread name through the shared comm cache, counts the record, calls the
 * pairing's enter/leave and the histogram's observe (Python: they keep their own semantics and
 * statistics), and renders the JSON line: the cached middle fields (Renderer.thread_middle), integers
 * printed here, and every string serialized by orjson. Anything unusual (a record cut short, a
 * timestamp out of range) is handed to the Python emitter, which raises or renders it as usual. */
#include "native.h"
#include <stddef.h>

enum { ARG_SIGNED = 0, ARG_UNSIGNED = 1, ARG_STRING = 2, ARG_CHAR = 3, ARG_ARRAY_SIGNED = 4, ARG_ARRAY_UNSIGNED = 5 };
#define MAX_INLINE_ARGS 16
#define MIDDLES 512 /* per-event cache of the middle fields, direct-mapped by thread */
#define COMM_CACHE 32
/* PAIR_LEAVE_KNOWN: a return of a probe whose entries a kernel filter removes; one whose entry was not
 * seen is neither counted nor emitted (the pairing counts it as filtered) */
enum { PAIR_NONE = 0, PAIR_ENTER = 1, PAIR_ENTER_COMM = 2, PAIR_LEAVE = 3, PAIR_LEAVE_KNOWN = 4 };

typedef struct {
    PyObject *key; /* bytes: "name": */
    int kind, offset, size, count; /* size: of one element; count: 1 but for arrays */
} Arg;

typedef struct {
    int32_t tid;
    long cpu;
    uint64_t ip, ret_ip;
    PyObject *comm, *middle; /* strong references: a cached comm pointer cannot be reused by another */
} Middle;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *emitter, *name, *probe, *enter, *leave, *observe, *counts, *renderer, *info, *full_name;
    PyObject *tgid_of, *by_thread, *clock, *lines, *comms, *new_comm, *dumps, *unknown_comm;
    PyObject *negative; /* dict: probe -> returns paired with a younger entry (counted, never observed) */
    PyObject *pairing; /* borrowed from enter's binding: a native Pairing, called in C; else NULL */
    long long unflushed; /* records counted, not yet added to counts[name] */
    int deferred; /* in the list of plans whose counts run() adds at its end */
    int tid_off, ip_off, ret_ip_off, sp_off, comm_off, fixed_size, pairing_mode;
    Py_ssize_t nargs;
    Arg *args;
    /* the last thread name seen, by its bytes (a thread's records come in runs) */
    PyObject *last_comm;
    Py_ssize_t last_comm_len;
    char last_comm_raw[COMM_CACHE];
    /* the middle fields by (tid, comm, cpu, ip, ret_ip), valid for one generation of Renderer.clock[3] */
    long long generation;
    Middle middles[MIDDLES];
    HistCache hist;
    PyObject *clock_objs[4]; /* Renderer.clock's items last converted, and their values */
    long long clock_vals[4];
} EmitPlan;

static PyObject *str_second, *str_thread_middle, *empty_tuple;

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

/* The Python emitter, for what this does not cover (it raises struct.error for a short record). */
static PyObject *fallback(EmitPlan *self, PyObject *page, Py_ssize_t o, uint64_t ts, long cpu) {
    PyObject *args[4] = {page, PyLong_FromSsize_t(o), PyLong_FromUnsignedLongLong(ts), PyLong_FromLong(cpu)};
    PyObject *r = args[1] && args[2] && args[3] ? PyObject_Vectorcall(self->emitter, args, 4, NULL) : NULL;
    Py_XDECREF(args[1]); Py_XDECREF(args[2]); Py_XDECREF(args[3]);
    return r;
}

/* Renderer.clock[i] as a C value, converted again only when the list holds another object. */
static int clock_get(EmitPlan *self, int i, long long *v) {
    PyObject *o = PyList_GET_ITEM(self->clock, i);
    if (o != self->clock_objs[i]) {
        long long x = PyLong_AsLongLong(o);
        if (x == -1 && PyErr_Occurred()) return -1;
        Py_XSETREF(self->clock_objs[i], Py_NewRef(o));
        self->clock_vals[i] = x;
    }
    *v = self->clock_vals[i];
    return 0;
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
    if (dict_add(self->counts, self->name, self->unflushed) < 0) return -1;
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

/* One record: the page, the record's offset in it, its timestamp and CPU; `defer`: count it at run()'s
 * end. Returns None (a new reference), or NULL with an exception set. */
PyObject *plan_emit(PyObject *plan, PyObject *page, Py_ssize_t o, uint64_t ts_u, long cpu, int defer) {
    EmitPlan *self = (EmitPlan *)plan;
    Py_ssize_t n = PyBytes_GET_SIZE(page);
    if (o < 0 || o > n - self->fixed_size || ts_u > (uint64_t)LLONG_MAX) /* the emitter raises struct.error */
        return fallback(self, page, o, ts_u, cpu);
    long long ts = (long long)ts_u;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(page) + o;
    long long wall = 0;
    PyObject *renderer = self->renderer, *clock = self->clock;
    if (renderer != Py_None) {  /* Renderer.clock: [wall_offset_ns, sec_ns, sec_text, pid_generation] */
        if (PyList_GET_SIZE(clock) != 4) { PyErr_SetString(PyExc_TypeError, "Renderer.clock"); return NULL; }
        long long offset;
        if (clock_get(self, 0, &offset) < 0 || __builtin_add_overflow(ts, offset, &wall) || wall < 0) {
            PyErr_Clear();
            return fallback(self, page, o, ts_u, cpu);
        }
    }
    int32_t tid = (int32_t)load(p + self->tid_off, 4, 1);
    uint64_t ip = load(p + self->ip_off, 8, 0);
    uint64_t ret_ip = self->ret_ip_off >= 0 ? load(p + self->ret_ip_off, 8, 0) : 0;
    uint64_t sp = self->sp_off >= 0 ? load(p + self->sp_off, 8, 0) : 0;

    PyObject *comm = NULL, *tid_o = NULL, *sp_o = NULL, *ts_o = NULL, *frame = NULL, *labels = NULL, *result = NULL;
    PyObject *middle = NULL, *line = NULL, *key = NULL;
    PyObject **strings = NULL, *inline_strings[MAX_INLINE_ARGS] = {NULL};
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
                comm = Py_NewRef(self->last_comm);
            } else {
                PyObject *raw = PyBytes_FromStringAndSize(bytes, b - a);
                if (!raw) goto done;
                comm = PyDict_GetItemWithError(self->comms, raw);
                if (comm) Py_INCREF(comm);
                else if (!PyErr_Occurred()) comm = PyObject_CallOneArg(self->new_comm, raw);
                Py_DECREF(raw);
                if (!comm) goto done;
                if (b - a <= COMM_CACHE) {
                    Py_XSETREF(self->last_comm, Py_NewRef(comm));
                    self->last_comm_len = b - a;
                    memcpy(self->last_comm_raw, bytes, b - a);
                }
            }
        }
    }
    if (!comm) { comm = self->unknown_comm; Py_INCREF(comm); }
    /* the string arguments, decoded and serialized before anything is counted (as the generated code) */
    if (self->nargs && renderer != Py_None) {
        strings = self->nargs <= MAX_INLINE_ARGS ? inline_strings : PyMem_Calloc(self->nargs, sizeof(PyObject *));
        if (!strings) { PyErr_NoMemory(); goto done; }
        for (Py_ssize_t i = 0; i < self->nargs; i++) {
            Arg *a = &self->args[i];
            PyObject *s;
            if (a->kind == ARG_CHAR) { /* rawpage._char: the byte as '%c' prints it */
                unsigned char c = p[a->offset];
                s = c < 0x80 ? PyUnicode_FromOrdinal(c) : PyUnicode_DecodeUTF8((const char *)&c, 1, "backslashreplace");
            } else if (a->kind == ARG_STRING) {
                uint32_t loc = (uint32_t)load(p + a->offset, 4, 0);
                if (!(loc >> 16)) continue; /* faulted: null */
                Py_ssize_t from, to;
                slice(n, o, loc, &from, &to);
                s = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(page) + from, to - from, "backslashreplace");
            } else {
                continue;
            }
            if (!s) goto done;
            strings[i] = PyObject_CallOneArg(self->dumps, s);
            Py_DECREF(s);
            if (!strings[i]) goto done;
            if (!PyBytes_Check(strings[i])) { PyErr_SetString(PyExc_TypeError, "dumps must return bytes"); goto done; }
        }
    }
    /* count: run() adds a batch's counts at its end; a call from Python counts at once (a return of a
     * probe with filtered entries: once its entry is found) */
    int leave = self->pairing_mode == PAIR_LEAVE || self->pairing_mode == PAIR_LEAVE_KNOWN;
    if (self->pairing_mode != PAIR_LEAVE_KNOWN) {
        if (defer && defer_count(self) < 0) goto done;
        self->unflushed++;
        if (!defer && flush_count(self) < 0) goto done;
    }
    if (self->pairing_mode != PAIR_NONE) {
        if (!self->pairing) { /* Python pairing: its arguments as Python ints */
            tid_o = PyLong_FromLong(tid);
            sp_o = PyLong_FromUnsignedLongLong(sp);
            ts_o = PyLong_FromLongLong(ts);
            if (!tid_o || !sp_o || !ts_o) goto done;
        }
        if (leave) {
            long long t0 = 0;
            int found;
            if (self->pairing) { /* native: the entry's frame without a Frame object */
                CFrame entry;
                found = pairing_leave_c(self->pairing, self->probe, tid, sp, &entry);
                if (found < 0) goto done;
                if (found) { t0 = entry.ts; labels = entry.extra; }
            } else {
                PyObject *call[3] = {self->probe, tid_o, sp_o};
                frame = PyObject_Vectorcall(self->leave, call, 3, NULL);
                if (!frame) goto done;
                found = frame != Py_None;
                if (found) {
                    PyObject *start = PyTuple_Check(frame) && PyTuple_GET_SIZE(frame) >= 3 ? PyTuple_GET_ITEM(frame, 1) : NULL;
                    t0 = start ? PyLong_AsLongLong(start) : 0;
                    if (!start || PyErr_Occurred()) { PyErr_SetString(PyExc_TypeError, "pairing frame"); goto done; }
                    labels = Py_NewRef(PyTuple_GET_ITEM(frame, 2));
                }
            }
            if (self->pairing_mode == PAIR_LEAVE_KNOWN) {
                if (!found) { result = Py_NewRef(Py_None); goto done; } /* its entry was filtered */
                if (defer && defer_count(self) < 0) goto done;
                self->unflushed++;
                if (!defer && flush_count(self) < 0) goto done;
            }
            if (found && ts < t0) { /* only records out of order can do this: counted, never observed */
                if (dict_add(self->negative, self->probe, 1) < 0) goto done;
            } else if (found) {
                duration = ts - t0;
                has_duration = 1;
                int observed = self->observe != Py_None ? hist_observe(&self->hist, labels, duration) : 1;
                if (observed < 0) goto done;
                if (!observed) { /* a label set without its series yet: ProbeHistograms.observe */
                    PyObject *d = PyLong_FromLongLong(duration);
                    if (!d) goto done;
                    PyObject *obs[2] = {labels, d};
                    PyObject *r = PyObject_Vectorcall(self->observe, obs, 2, NULL);
                    Py_DECREF(d);
                    if (!r) goto done;
                    Py_DECREF(r);
                }
            }
        } else {
            PyObject *extra = empty_tuple;
            if (self->pairing_mode == PAIR_ENTER_COMM && !(extra = PyTuple_Pack(1, comm))) goto done;
            if (extra == empty_tuple) Py_INCREF(extra);
            if (self->pairing) {
                int bad = pairing_enter(self->pairing, self->probe, tid, sp, ts, extra) < 0;
                Py_DECREF(extra);
                if (bad) goto done;
            } else {
                PyObject *call[5] = {self->probe, tid_o, sp_o, ts_o, extra};
                PyObject *r = PyObject_Vectorcall(self->enter, call, 5, NULL);
                Py_DECREF(extra);
                if (!r) goto done;
                Py_DECREF(r);
            }
        }
    }
    if (renderer == Py_None) { result = Py_None; Py_INCREF(result); goto done; }
    /* the second's text (Renderer.second caches it) */
    long long sec_ns;
    if (clock_get(self, 1, &sec_ns) < 0) goto done;
    long long rel = wall - sec_ns;
    if (rel < 0 || rel >= 1000000000LL) {
        PyObject *w = PyLong_FromLongLong(wall);
        if (!w) goto done;
        PyObject *r = PyObject_CallMethodOneArg(renderer, str_second, w);
        Py_DECREF(w);
        if (!r) goto done;
        Py_DECREF(r);
        if (PyList_GET_SIZE(clock) != 4) { PyErr_SetString(PyExc_TypeError, "Renderer.clock"); goto done; }
        if (clock_get(self, 1, &sec_ns) < 0) goto done;
        rel = wall - sec_ns;
        if (rel < 0 || rel >= 1000000000LL) { PyErr_SetString(PyExc_ValueError, "Renderer.second"); goto done; }
    }
    {
        long long generation;
        if (clock_get(self, 3, &generation) < 0) goto done;
        if (generation != self->generation) {  /* Renderer.forget_pids: process ids may have changed */
            for (int i = 0; i < MIDDLES; i++) { Py_CLEAR(self->middles[i].comm); Py_CLEAR(self->middles[i].middle); }
            self->generation = generation;
        }
        uint64_t h = ((uint64_t)(uint32_t)tid * 0x9E3779B97F4A7C15ULL) ^ (ip * 0xC2B2AE3D27D4EB4FULL) ^ ret_ip ^ (uint64_t)cpu;
        Middle *m = &self->middles[(h ^ (h >> 32)) & (MIDDLES - 1)];
        if (m->middle && m->tid == tid && m->cpu == cpu && m->ip == ip && m->ret_ip == ret_ip && m->comm == comm) {
            middle = Py_NewRef(m->middle);
        } else {
            if (!tid_o && !(tid_o = PyLong_FromLong(tid))) goto done;
            PyObject *cpu_o = PyLong_FromLong(cpu), *ip_o = PyLong_FromUnsignedLongLong(ip);
            PyObject *ret_o = PyLong_FromUnsignedLongLong(ret_ip);
            if (cpu_o && ip_o && ret_o) key = PyTuple_Pack(6, self->full_name, tid_o, comm, cpu_o, ip_o, ret_o);
            if (key) {
                middle = PyDict_GetItemWithError(self->by_thread, key);
                if (middle) Py_INCREF(middle);
                else if (!PyErr_Occurred()) {
                    PyObject *pid = PyObject_CallOneArg(self->tgid_of, tid_o);
                    if (pid) {
                        PyObject *call[8] = {renderer, self->info, pid, tid_o, comm, cpu_o, ip_o, ret_o};
                        middle = PyObject_VectorcallMethod(str_thread_middle, call, 8, NULL);
                        Py_DECREF(pid);
                    }
                }
            }
            Py_XDECREF(cpu_o); Py_XDECREF(ip_o); Py_XDECREF(ret_o);
            if (!middle) goto done;
            if (!PyBytes_Check(middle)) { PyErr_SetString(PyExc_TypeError, "middle"); goto done; }
            Py_XSETREF(m->comm, Py_NewRef(comm));
            Py_XSETREF(m->middle, Py_NewRef(middle));
            m->tid = tid; m->cpu = cpu; m->ip = ip; m->ret_ip = ret_ip;
        }
    }
    PyObject *sec_text = PyList_GET_ITEM(clock, 2);
    if (Py_IS_TYPE(self->lines, &LinesType)) { /* from here on no Python code runs until the line is done */
        out.target = (Lines *)self->lines;
        out.buf = out.target->buf;
        out.len = out.target->len;
        out.cap = out.target->cap;
    }
    int ok = PUTS(&out, "{\"time\":\"") == 0 && PyBytes_Check(sec_text) && put_bytes(&out, sec_text) == 0
             && put_int(&out, (uint64_t)(rel / 1000), 0, 6) == 0 && PUTS(&out, "Z\",\"ts_ns\":") == 0
             && put_int(&out, (uint64_t)wall, 0, 1) == 0 && PUTS(&out, ",") == 0 && put_bytes(&out, middle) == 0
             && PUTS(&out, ",\"args\":{") == 0;
    if (!ok) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "sec_text"); goto done; }
    for (Py_ssize_t i = 0; i < self->nargs; i++) {
        Arg *a = &self->args[i];
        if ((i && PUTS(&out, ",") < 0) || put_bytes(&out, a->key) < 0) goto done;
        if (a->kind == ARG_STRING || a->kind == ARG_CHAR) {
            if ((strings[i] ? put_bytes(&out, strings[i]) : PUTS(&out, "null")) < 0) goto done;
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
        if (!line || PyList_Append(self->lines, line) < 0) goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (strings) {
        for (Py_ssize_t i = 0; i < self->nargs; i++) Py_XDECREF(strings[i]);
        if (strings != inline_strings) PyMem_Free(strings);
    }
    if (!out.target && out.buf != out.inline_buf) PyMem_Free(out.buf);
    Py_XDECREF(comm); Py_XDECREF(tid_o); Py_XDECREF(sp_o); Py_XDECREF(ts_o); Py_XDECREF(frame); Py_XDECREF(labels);
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
    if (PyErr_Occurred() || ts < 0) { /* what C does not hold: the Python emitter */
        PyErr_Clear();
        return PyObject_Vectorcall(((EmitPlan *)plan)->emitter, args, 4, NULL);
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

static void plan_dealloc(EmitPlan *self) {
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->emitter); Py_CLEAR(self->name); Py_CLEAR(self->probe); Py_CLEAR(self->enter);
    Py_CLEAR(self->leave); Py_CLEAR(self->observe); Py_CLEAR(self->counts); Py_CLEAR(self->renderer);
    Py_CLEAR(self->info); Py_CLEAR(self->full_name); Py_CLEAR(self->tgid_of); Py_CLEAR(self->by_thread);
    Py_CLEAR(self->clock); Py_CLEAR(self->lines); Py_CLEAR(self->comms); Py_CLEAR(self->new_comm); Py_CLEAR(self->dumps);
    Py_CLEAR(self->unknown_comm); Py_CLEAR(self->negative);
    Py_CLEAR(self->last_comm);
    for (int i = 0; i < MIDDLES; i++) { Py_CLEAR(self->middles[i].comm); Py_CLEAR(self->middles[i].middle); }
    for (int i = 0; i < 4; i++) Py_CLEAR(self->clock_objs[i]);
    hist_clear(&self->hist);
    for (Py_ssize_t i = 0; i < self->nargs; i++) Py_CLEAR(self->args[i].key);
    PyMem_Free(self->args);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int plan_traverse(EmitPlan *self, visitproc visit, void *arg) {
    Py_VISIT(self->emitter); Py_VISIT(self->enter); Py_VISIT(self->leave); Py_VISIT(self->observe);
    Py_VISIT(self->counts); Py_VISIT(self->renderer); Py_VISIT(self->info); Py_VISIT(self->tgid_of);
    Py_VISIT(self->by_thread); Py_VISIT(self->clock); Py_VISIT(self->lines); Py_VISIT(self->comms); Py_VISIT(self->new_comm);
    Py_VISIT(self->dumps); Py_VISIT(self->negative); Py_VISIT(self->hist.series); Py_VISIT(self->hist.labels); Py_VISIT(self->hist.last);
    for (int i = 0; i < 4; i++) Py_VISIT(self->clock_objs[i]);
    return 0;
}

/* EmitPlan(emitter, name, probe, fields, args, pairing, sinks)
 *   fields = (tid_off, ip_off, ret_ip_off, sp_off, comm_off, fixed_size): -1 where the event has none
 *   args = ((key_bytes, kind, offset, element size, count), ...)
 *   sinks = (enter, leave, histograms, counts, renderer, info, full_name, tgid_of, by_thread, clock, lines,
 *            comms, new_comm, dumps, negative): histograms, the probe's ProbeHistograms or None; negative,
 *            the pipeline's per-probe count of negative durations */
static PyObject *plan_new(PyTypeObject *type, PyObject *a, PyObject *kw) {
    PyObject *emitter, *name, *probe, *fields, *args, *sinks;
    int pairing;
    if (kw && PyDict_GET_SIZE(kw)) { PyErr_SetString(PyExc_TypeError, "no keywords"); return NULL; }
    if (!PyArg_ParseTuple(a, "OUUO!O!iO!", &emitter, &name, &probe, &PyTuple_Type, &fields, &PyTuple_Type, &args,
                          &pairing, &PyTuple_Type, &sinks))
        return NULL;
    EmitPlan *self = (EmitPlan *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->vectorcall = plan_call;
    if (!PyArg_ParseTuple(fields, "iiiiii", &self->tid_off, &self->ip_off, &self->ret_ip_off, &self->sp_off,
                          &self->comm_off, &self->fixed_size))
        goto fail;
    PyObject *histograms;
    if (!PyArg_ParseTuple(sinks, "OOOO!OOUOO!O!O!O!OOO!", &self->enter, &self->leave, &histograms, &PyDict_Type,
                          &self->counts, &self->renderer, &self->info, &self->full_name, &self->tgid_of,
                          &PyDict_Type, &self->by_thread, &PyList_Type, &self->clock, &PyBaseObject_Type, &self->lines,
                          &PyDict_Type, &self->comms, &self->new_comm, &self->dumps, &PyDict_Type, &self->negative)) {
        self->enter = self->leave = self->counts = self->renderer = self->info = NULL;
        self->full_name = self->tgid_of = self->by_thread = self->clock = self->lines = self->comms = NULL;
        self->new_comm = self->dumps = self->negative = NULL;
        goto fail;
    }
    Py_INCREF(self->enter); Py_INCREF(self->leave); Py_INCREF(self->counts);
    Py_INCREF(self->renderer); Py_INCREF(self->info); Py_INCREF(self->full_name); Py_INCREF(self->tgid_of);
    Py_INCREF(self->by_thread); Py_INCREF(self->clock); Py_INCREF(self->lines); Py_INCREF(self->comms); Py_INCREF(self->new_comm);
    Py_INCREF(self->dumps); Py_INCREF(self->negative);
    /* the probe's ProbeHistograms (or None): its observe() for new label sets, its series for the rest */
    self->observe = histograms == Py_None ? Py_NewRef(Py_None) : PyObject_GetAttrString(histograms, "observe");
    if (!self->observe || hist_init(&self->hist, histograms) < 0) goto fail;
    if (!PyList_Check(self->lines) && !Py_IS_TYPE(self->lines, &LinesType)) {
        PyErr_SetString(PyExc_TypeError, "lines: a list or a Lines");
        goto fail;
    }
    self->emitter = Py_NewRef(emitter);
    self->name = Py_NewRef(name);
    self->probe = Py_NewRef(probe);
    self->pairing_mode = pairing;
    if (PyCFunction_Check(self->enter) && PyCFunction_GET_SELF(self->enter)
        && PyObject_TypeCheck(PyCFunction_GET_SELF(self->enter), &PairingType))
        self->pairing = PyCFunction_GET_SELF(self->enter); /* kept alive by self->enter */
    if (!(self->unknown_comm = PyUnicode_FromString("<...>"))) goto fail;
    self->generation = -1;
    self->nargs = PyTuple_GET_SIZE(args);
    self->args = PyMem_Calloc(self->nargs ? self->nargs : 1, sizeof(Arg));
    if (!self->args) { PyErr_NoMemory(); goto fail; }
    for (Py_ssize_t i = 0; i < self->nargs; i++) {
        Arg *arg = &self->args[i];
        PyObject *key;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(args, i), "O!iiii", &PyBytes_Type, &key, &arg->kind, &arg->offset,
                              &arg->size, &arg->count))
            goto fail;
        arg->key = Py_NewRef(key);
        if (arg->kind < ARG_SIGNED || arg->kind > ARG_ARRAY_UNSIGNED || (arg->size != 1 && arg->size != 2 &&
            arg->size != 4 && arg->size != 8) || arg->count < 1 || (arg->count > 1 && arg->kind < ARG_ARRAY_SIGNED)
            || (arg->kind == ARG_STRING && arg->size != 4) || (arg->kind == ARG_CHAR && arg->size != 1)
            || arg->offset < 0 || arg->offset + (Py_ssize_t)arg->size * arg->count > self->fixed_size) {
            PyErr_SetString(PyExc_ValueError, "bad argument field");
            goto fail;
        }
    }
    if (self->tid_off < 0 || self->ip_off < 0 || self->tid_off + 4 > self->fixed_size
        || self->ip_off + 8 > self->fixed_size || self->ret_ip_off + 8 > self->fixed_size
        || self->sp_off + 8 > self->fixed_size || self->comm_off + 4 > self->fixed_size
        || pairing < PAIR_NONE || pairing > PAIR_LEAVE_KNOWN) {
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
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(EmitPlan, vectorcall),
    .tp_doc = "A native emitter for one event (see rawemit.native_emitter).",
};

int plan_module_init(void) {
    str_second = PyUnicode_InternFromString("second");
    str_thread_middle = PyUnicode_InternFromString("thread_middle");
    empty_tuple = PyTuple_New(0);
    return str_second && str_thread_middle && empty_tuple && PyType_Ready(&EmitPlanType) == 0 ? 0 : -1;
}
