/* Stage pipeline: the native twin of pipeline/pairing.py's PythonPairing (its module docstring has the
 * strategy): the same API, the same pairs, the same evictions in the same order, the same statistics;
 * pairing.py keeps the Python class as the reference (the tests run both on the same operations) and as
 * the fallback where this is not built.
 *
 * Stacks live in an open-addressing table keyed by (probe index, tid) and in a doubly linked list in
 * order of last activity (the OrderedDict of the Python class); frames are C structs, turned into
 * Frame tuples only when a return hands one back. */
#include "native.h"

enum { UNWOUND = 0, THREAD_EXIT = 1, CAPACITY = 2, REASONS = 3 };
static const char *REASON_NAMES[REASONS] = {"unwound", "thread_exit", "capacity"};


typedef struct Stack {
    Py_ssize_t probe;
    long long tid;
    CFrame *frames;
    Py_ssize_t n, cap;
    struct Stack *prev, *next; /* activity order: head = least recently active */
} Stack;

typedef struct {
    long long paired, without_entry, filtered, evicted[REASONS];
    int paired_seen, evicted_seen[REASONS]; /* the Python Counters keep a key once touched, even at 0 */
    int entry_filtered; /* the probe's entry event has a kernel filter: unpaired returns are "filtered" */
} ProbeCounts;

typedef struct {
    PyObject_HEAD
    Py_ssize_t max_pending, max_depth, pending;
    PyObject *probes;   /* dict: probe name -> index */
    PyObject *names;    /* list: index -> probe name */
    ProbeCounts *counts;
    Py_ssize_t ncounts;
    Stack **table;      /* open addressing, linear probing; NULL = empty, TOMB = deleted */
    Py_ssize_t table_size, used, tombs;
    Stack *head, *tail;
    Py_ssize_t nstacks;
    PyObject *frame_type;
} Pairing;

static Stack TOMB_STACK;
#define TOMB (&TOMB_STACK)

static uint64_t hash_key(Py_ssize_t probe, long long tid) {
    uint64_t h = (uint64_t)tid * 0x9E3779B97F4A7C15ULL ^ (uint64_t)probe * 0xC2B2AE3D27D4EB4FULL;
    return h ^ (h >> 29);
}

static Py_ssize_t probe_index(Pairing *self, PyObject *probe) {
    PyObject *idx = PyDict_GetItemWithError(self->probes, probe);
    if (idx) return PyLong_AsSsize_t(idx);
    if (PyErr_Occurred()) return -1;
    if (!PyUnicode_Check(probe)) { PyErr_SetString(PyExc_TypeError, "probe must be a str"); return -1; }
    Py_ssize_t i = self->ncounts;
    ProbeCounts *grown = PyMem_Realloc(self->counts, (i + 1) * sizeof(ProbeCounts));
    if (!grown) { PyErr_NoMemory(); return -1; }
    self->counts = grown;
    memset(&grown[i], 0, sizeof(ProbeCounts));
    PyObject *v = PyLong_FromSsize_t(i);
    if (!v || PyDict_SetItem(self->probes, probe, v) < 0 || PyList_Append(self->names, probe) < 0) {
        Py_XDECREF(v);
        return -1;
    }
    Py_DECREF(v);
    self->ncounts = i + 1;
    return i;
}

static Py_ssize_t slot_of(Pairing *self, Py_ssize_t probe, long long tid, int *found) {
    Py_ssize_t mask = self->table_size - 1, i = (Py_ssize_t)(hash_key(probe, tid) & (uint64_t)mask), tomb = -1;
    for (;;) {
        Stack *s = self->table[i];
        if (!s) { *found = 0; return tomb >= 0 ? tomb : i; }
        if (s == TOMB) { if (tomb < 0) tomb = i; }
        else if (s->probe == probe && s->tid == tid) { *found = 1; return i; }
        i = (i + 1) & mask;
    }
}

static int rehash(Pairing *self, Py_ssize_t size) {
    Stack **old = self->table;
    Py_ssize_t old_size = self->table_size;
    Stack **table = PyMem_Calloc(size, sizeof(Stack *));
    if (!table) { PyErr_NoMemory(); return -1; }
    self->table = table;
    self->table_size = size;
    self->used = self->tombs = 0;
    for (Py_ssize_t i = 0; i < old_size; i++) {
        Stack *s = old[i];
        if (s && s != TOMB) {
            int found;
            self->table[slot_of(self, s->probe, s->tid, &found)] = s;
            self->used++;
        }
    }
    PyMem_Free(old);
    return 0;
}

static void unlink_stack(Pairing *self, Stack *s) {
    if (s->prev) s->prev->next = s->next; else self->head = s->next;
    if (s->next) s->next->prev = s->prev; else self->tail = s->prev;
    s->prev = s->next = NULL;
}

static void append_stack(Pairing *self, Stack *s) {
    s->prev = self->tail;
    s->next = NULL;
    if (self->tail) self->tail->next = s; else self->head = s;
    self->tail = s;
}

/* The extras an operation lets go of, released only once it is done: releasing one may run Python code
 * (a finalizer) that calls this Pairing again, which must then find it consistent, and must not free a
 * stack the operation still uses. Sixteen fit without an allocation (an operation rarely frees any). */
typedef struct { PyObject **items; Py_ssize_t n, cap; PyObject *local[16]; } Graveyard;

static void graveyard_init(Graveyard *g) {
    g->items = g->local;
    g->n = 0;
    g->cap = 16;
}

static void bury(Graveyard *g, PyObject *o) {
    if (g->n == g->cap) {
        Py_ssize_t cap = g->cap * 2;
        PyObject **grown = g->items == g->local ? PyMem_Malloc(cap * sizeof(PyObject *))
                                                : PyMem_Realloc(g->items, cap * sizeof(PyObject *));
        if (!grown) { Py_XDECREF(o); return; } /* out of memory: released now rather than leaked */
        if (g->items == g->local) memcpy(grown, g->local, sizeof g->local);
        g->items = grown;
        g->cap = cap;
    }
    g->items[g->n++] = o;
}

static void release(Graveyard *g) {
    for (Py_ssize_t i = 0; i < g->n; i++) Py_XDECREF(g->items[i]);
    if (g->items != g->local) PyMem_Free(g->items);
    graveyard_init(g);
}

static void free_stack(Stack *s) {
    for (Py_ssize_t i = 0; i < s->n; i++) Py_XDECREF(s->frames[i].extra);
    PyMem_Free(s->frames);
    PyMem_Free(s);
}

/* Remove the stack from the table and the activity list, and free it. */
static void remove_stack(Pairing *self, Stack *s) {
    int found;
    Py_ssize_t i = slot_of(self, s->probe, s->tid, &found);
    if (found) { self->table[i] = TOMB; self->used--; self->tombs++; }
    unlink_stack(self, s);
    self->nstacks--;
    free_stack(s);
}

static void drop_empty_stacks(Pairing *self) {
    for (Stack *s = self->head, *next; s; s = next) {
        next = s->next;
        if (!s->n) remove_stack(self, s);
    }
}

static Stack *new_stack(Pairing *self, Py_ssize_t probe, long long tid) {
    if ((self->used + self->tombs + 1) * 2 > self->table_size
        && rehash(self, self->used * 4 > self->table_size ? self->table_size * 2 : self->table_size) < 0)
        return NULL;
    Stack *s = PyMem_Calloc(1, sizeof(Stack));
    if (!s) { PyErr_NoMemory(); return NULL; }
    s->probe = probe;
    s->tid = tid;
    int found;
    Py_ssize_t i = slot_of(self, probe, tid, &found);
    if (self->table[i] == TOMB) self->tombs--;
    self->table[i] = s;
    self->used++;
    self->nstacks++;
    append_stack(self, s);
    return s;
}

static void pop_front(Stack *s, Graveyard *g) {
    bury(g, s->frames[0].extra);
    memmove(s->frames, s->frames + 1, (s->n - 1) * sizeof(CFrame));
    s->n--;
}

static void evict(Pairing *self, Py_ssize_t probe, int reason) {
    self->pending--;
    self->counts[probe].evicted[reason]++;
    self->counts[probe].evicted_seen[reason] = 1;
}

static int parse_key(Pairing *self, PyObject *probe, PyObject *tid_o, PyObject *sp_o, Py_ssize_t *idx,
                     long long *tid, uint64_t *sp) {
    *idx = probe_index(self, probe);
    if (*idx < 0) return -1;
    *tid = PyLong_AsLongLong(tid_o);
    if (*tid == -1 && PyErr_Occurred()) return -1;
    *sp = PyLong_AsUnsignedLongLong(sp_o);
    if (*sp == (uint64_t)-1 && PyErr_Occurred()) return -1;
    return 0;
}

/* enter() with C values: what the native emitters call (emit.c), and the method below. */
int pairing_enter(PyObject *obj, PyObject *probe_name, long long tid, uint64_t sp, long long ts, PyObject *extra) {
    Pairing *self = (Pairing *)obj;
    Py_ssize_t probe = probe_index(self, probe_name);
    if (probe < 0) return -1;
    int found;
    Py_ssize_t i = slot_of(self, probe, tid, &found);
    Stack *s;
    Graveyard dead;
    graveyard_init(&dead);
    if (!found) {
        if (self->nstacks >= self->max_pending) drop_empty_stacks(self);
        if (!(s = new_stack(self, probe, tid))) return -1;
    } else {
        s = self->table[i];
        unlink_stack(self, s);
        append_stack(self, s);
    }
    if (sp) {
        while (s->n && s->frames[s->n - 1].sp <= sp) {  /* that frame's stack space is being reused */
            bury(&dead, s->frames[--s->n].extra);
            evict(self, probe, UNWOUND);
        }
    }
    if (s->n >= self->max_depth) {
        pop_front(s, &dead);
        evict(self, probe, CAPACITY);
    }
    if (s->n == s->cap) {
        Py_ssize_t cap = s->cap ? s->cap * 2 : 4;
        CFrame *grown = PyMem_Realloc(s->frames, cap * sizeof(CFrame));
        if (!grown) { PyErr_NoMemory(); release(&dead); return -1; }
        s->frames = grown;
        s->cap = cap;
    }
    Py_INCREF(extra);
    s->frames[s->n++] = (CFrame){sp, ts, extra};
    self->pending++;
    if (self->pending > self->max_pending) {  /* the least recently active thread loses its oldest entry */
        for (Stack *o = self->head; o; o = o->next) {
            if (o->n) {
                pop_front(o, &dead);
                evict(self, o->probe, CAPACITY);
                break;
            }
        }
    }
    release(&dead);
    return 0;
}

static PyObject *Pairing_enter(Pairing *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *extra = nargs == 5 ? args[4] : Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nkw == 1 && nargs == 4 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "extra") == 0)
        extra = args[4];
    else if (nkw || nargs < 4 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "enter(probe, tid, sp, ts_ns, extra=None)");
        return NULL;
    }
    Py_ssize_t probe; long long tid; uint64_t sp;
    if (parse_key(self, args[0], args[1], args[2], &probe, &tid, &sp) < 0) return NULL;
    long long ts = PyLong_AsLongLong(args[3]);
    if (ts == -1 && PyErr_Occurred()) return NULL;
    if (pairing_enter((PyObject *)self, args[0], tid, sp, ts, extra) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *make_frame(Pairing *self, CFrame f) {
    PyTypeObject *type = (PyTypeObject *)self->frame_type;
    PyObject *frame = type->tp_alloc(type, 3), *sp = PyLong_FromUnsignedLongLong(f.sp), *ts = PyLong_FromLongLong(f.ts);
    if (!frame || !sp || !ts) { Py_XDECREF(frame); Py_XDECREF(sp); Py_XDECREF(ts); return NULL; }
    PyTuple_SET_ITEM(frame, 0, sp);
    PyTuple_SET_ITEM(frame, 1, ts);
    PyTuple_SET_ITEM(frame, 2, f.extra); /* the reference the stack held */
    return frame;
}

/* A return that closes no pending entry: filtered when the probe's entries are filtered, else without entry. */
static int unpaired(Pairing *self, Py_ssize_t probe) {
    ProbeCounts *c = &self->counts[probe];
    if (c->entry_filtered) c->filtered++;
    else c->without_entry++;
    return 0;
}

/* The stack of pending entries of (probe, tid), or NULL. */
static Stack *stack_of(Pairing *self, Py_ssize_t probe, long long tid) {
    int found;
    Py_ssize_t i = slot_of(self, probe, tid, &found);
    return found ? self->table[i] : NULL;
}

/* Close the innermost pending entry of ``s`` (not empty): its frame, with the reference the stack held on
 * its extra. */
static CFrame close_top(Pairing *self, Py_ssize_t probe, Stack *s) {
    self->pending--;
    self->counts[probe].paired++;
    self->counts[probe].paired_seen = 1;
    return s->frames[--s->n];
}

/* leave() with C values: 1 and the entry's frame (its extra: a new reference) when the return closes a
 * pending entry, 0 when it does not (counted), -1 with an exception. */
int pairing_leave_c(PyObject *obj, PyObject *probe_name, long long tid, uint64_t sp, CFrame *entry) {
    Pairing *self = (Pairing *)obj;
    Py_ssize_t probe = probe_index(self, probe_name);
    if (probe < 0) return -1;
    Stack *s = stack_of(self, probe, tid);
    if (!s || !s->n) return unpaired(self, probe);
    if (!sp) {
        *entry = close_top(self, probe, s);
        return 1;
    }
    if (sp < 8) return unpaired(self, probe); /* below any frame */
    uint64_t target = sp - 8; /* RETURN_ADDRESS_SIZE */
    Graveyard dead;
    graveyard_init(&dead);
    while (s->n && s->frames[s->n - 1].sp < target) {
        bury(&dead, s->frames[--s->n].extra);
        evict(self, probe, UNWOUND);
    }
    int closes = s->n && s->frames[s->n - 1].sp == target;
    CFrame f = closes ? close_top(self, probe, s) : (CFrame){0, 0, NULL};
    release(&dead); /* s may be gone from here */
    if (!closes) return unpaired(self, probe);
    *entry = f;
    return 1;
}

/* leave_matching with C values (for the native emitter): like pairing_leave_c(probe, tid, 0), but the
 * innermost entry is closed only when each non-None item of ``want`` (a tuple) equals the same item of
 * its extra (its label values); otherwise the return is counted as without entry and the entry stays
 * open. 1 (and the frame), 0, or -1 with an exception. */
int pairing_leave_matching_c(PyObject *obj, PyObject *probe_name, long long tid, PyObject *want, CFrame *entry) {
    Pairing *self = (Pairing *)obj;
    Py_ssize_t probe = probe_index(self, probe_name);
    if (probe < 0) return -1;
    Stack *s = stack_of(self, probe, tid);
    if (!s || !s->n) return unpaired(self, probe);
    PyObject *extra = Py_NewRef(s->frames[s->n - 1].extra); /* held: == may run Python code */
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(want); j++) {
        PyObject *w = PyTuple_GET_ITEM(want, j);
        if (w == Py_None) continue;
        if (!PyTuple_Check(extra) || j >= PyTuple_GET_SIZE(extra)) {
            Py_DECREF(extra);
            PyErr_SetString(PyExc_ValueError, "leave_matching: the entry's extra has no such item");
            return -1;
        }
        int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(extra, j), w, Py_EQ);
        if (eq <= 0) {
            Py_DECREF(extra);
            return eq < 0 ? -1 : unpaired(self, probe);
        }
    }
    /* == ran Python code, which may have changed the stack: close the entry only if it is still the one
     * compared */
    s = stack_of(self, probe, tid);
    int same = s && s->n && s->frames[s->n - 1].extra == extra;
    Py_DECREF(extra);
    if (!same) return unpaired(self, probe);
    *entry = close_top(self, probe, s);
    return 1;
}

/* leave_matching(probe, tid, want): pairing_leave_matching_c from Python. */
static PyObject *Pairing_leave_matching(Pairing *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "leave_matching(probe, tid, want: tuple)");
        return NULL;
    }
    long long tid = PyLong_AsLongLong(args[1]);
    if (tid == -1 && PyErr_Occurred()) return NULL;
    CFrame f;
    int found = pairing_leave_matching_c((PyObject *)self, args[0], tid, args[2], &f);
    if (found <= 0) {
        if (found < 0) return NULL;
        Py_RETURN_NONE;
    }
    PyObject *frame = make_frame(self, f);
    if (!frame) Py_DECREF(f.extra);
    return frame;
}

/* leave() with C values: the Frame, None, or NULL with an exception. */
PyObject *pairing_leave(PyObject *obj, PyObject *probe_name, long long tid, uint64_t sp) {
    CFrame f;
    int found = pairing_leave_c(obj, probe_name, tid, sp, &f);
    if (found <= 0) {
        if (found < 0) return NULL;
        Py_RETURN_NONE;
    }
    PyObject *frame = make_frame((Pairing *)obj, f);
    if (!frame) Py_DECREF(f.extra);
    return frame;
}

static PyObject *Pairing_leave(Pairing *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "leave(probe, tid, sp)"); return NULL; }
    Py_ssize_t probe; long long tid; uint64_t sp;
    if (parse_key(self, args[0], args[1], args[2], &probe, &tid, &sp) < 0) return NULL;
    return pairing_leave((PyObject *)self, args[0], tid, sp);
}

static PyObject *Pairing_set_entry_filtered(Pairing *self, PyObject *probes) {
    PyObject *it = PyObject_GetIter(probes), *probe;
    if (!it) return NULL;
    while ((probe = PyIter_Next(it))) {
        Py_ssize_t i = probe_index(self, probe);
        Py_DECREF(probe);
        if (i < 0) { Py_DECREF(it); return NULL; }
        self->counts[i].entry_filtered = 1;
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Pairing_drop_empty(Pairing *self, PyObject *unused) {
    (void)unused;
    drop_empty_stacks(self);
    Py_RETURN_NONE;
}

static PyObject *Pairing_threads(Pairing *self, PyObject *unused) {
    (void)unused;
    PyObject *out = PySet_New(NULL);
    for (Stack *s = self->head; out && s; s = s->next) {
        if (!s->n) continue;
        PyObject *tid = PyLong_FromLongLong(s->tid);
        if (!tid || PySet_Add(out, tid) < 0) Py_CLEAR(out);
        Py_XDECREF(tid);
    }
    return out;
}

static PyObject *Pairing_evict_thread(Pairing *self, PyObject *tid_o) {
    long long tid = PyLong_AsLongLong(tid_o);
    if (tid == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t total = 0;
    Stack *gone = NULL; /* the thread's stacks, detached first, freed (their extras released) last */
    for (Stack *s = self->head, *next; s; s = next) {
        next = s->next;
        if (s->tid != tid) continue;
        ProbeCounts *c = &self->counts[s->probe];
        c->evicted[THREAD_EXIT] += s->n;
        c->evicted_seen[THREAD_EXIT] = 1;
        total += s->n;
        int found;
        Py_ssize_t i = slot_of(self, s->probe, s->tid, &found);
        if (found) { self->table[i] = TOMB; self->used--; self->tombs++; }
        unlink_stack(self, s);
        self->nstacks--;
        s->next = gone;
        gone = s;
    }
    self->pending -= total;
    for (Stack *next; gone; gone = next) {
        next = gone->next;
        free_stack(gone);
    }
    return PyLong_FromSsize_t(total);
}

static int add_count(PyObject *dict, PyObject *key, long long n) {
    PyObject *v = PyLong_FromLongLong(n);
    int r = v ? PyDict_SetItem(dict, key, v) : -1;
    Py_XDECREF(v);
    return r;
}

/* (pending_by_probe, paired_by_probe, returns_without_entry_by_probe, evicted_by_probe,
 * returns_filtered_by_probe) as the Python class's Counters would give them; pairing.Pairing.statistics
 * wraps them in a PairingStats. */
static PyObject *Pairing_counts(Pairing *self, PyObject *unused) {
    (void)unused;
    PyObject *pending = PyDict_New(), *paired = PyDict_New(), *without = PyDict_New(), *evicted = PyDict_New();
    PyObject *filtered = PyDict_New();
    if (!pending || !paired || !without || !evicted || !filtered) goto fail;
    long long *per_probe = PyMem_Calloc(self->ncounts ? self->ncounts : 1, sizeof(long long));
    char *seen = PyMem_Calloc(self->ncounts ? self->ncounts : 1, 1);
    if (!per_probe || !seen) { PyMem_Free(per_probe); PyMem_Free(seen); PyErr_NoMemory(); goto fail; }
    PyObject *order = PyList_New(0); /* probes in the order their first stack appears (insertion order) */
    for (Stack *s = self->head; order && s; s = s->next) {
        per_probe[s->probe] += s->n;
        if (!seen[s->probe]) {
            seen[s->probe] = 1;
            if (PyList_Append(order, PyList_GET_ITEM(self->names, s->probe)) < 0) Py_CLEAR(order);
        }
    }
    int bad = !order;
    for (Py_ssize_t k = 0; !bad && k < PyList_GET_SIZE(order); k++) {
        PyObject *name = PyList_GET_ITEM(order, k), *idx = PyDict_GetItemWithError(self->probes, name);
        bad = !idx || add_count(pending, name, per_probe[PyLong_AsSsize_t(idx)]) < 0;
    }
    Py_XDECREF(order);
    PyMem_Free(per_probe);
    PyMem_Free(seen);
    if (bad) goto fail;
    for (Py_ssize_t i = 0; i < self->ncounts; i++) {
        PyObject *name = PyList_GET_ITEM(self->names, i);
        ProbeCounts *c = &self->counts[i];
        if (c->paired_seen && add_count(paired, name, c->paired) < 0) goto fail;
        if (c->without_entry && add_count(without, name, c->without_entry) < 0) goto fail;
        if (c->filtered && add_count(filtered, name, c->filtered) < 0) goto fail;
        for (int r = 0; r < REASONS; r++) {
            if (!c->evicted_seen[r]) continue;
            PyObject *key = Py_BuildValue("(Os)", name, REASON_NAMES[r]);
            int err = !key || add_count(evicted, key, c->evicted[r]) < 0;
            Py_XDECREF(key);
            if (err) goto fail;
        }
    }
    return Py_BuildValue("(NNNNN)", pending, paired, without, evicted, filtered);
fail:
    Py_XDECREF(pending); Py_XDECREF(paired); Py_XDECREF(without); Py_XDECREF(evicted); Py_XDECREF(filtered);
    return NULL;
}

/* {(probe, tid): [Frame, ...]} in activity order: what the Python class keeps (for tests and debugging). */
static PyObject *Pairing_get_stacks(Pairing *self, void *closure) {
    (void)closure;
    PyObject *out = PyDict_New();
    for (Stack *s = self->head; out && s; s = s->next) {
        PyObject *frames = PyList_New(s->n), *key = Py_BuildValue("(OL)", PyList_GET_ITEM(self->names, s->probe), s->tid);
        int bad = !frames || !key;
        for (Py_ssize_t i = 0; !bad && i < s->n; i++) {
            Py_INCREF(s->frames[i].extra);
            PyObject *f = make_frame(self, s->frames[i]);
            if (!f) { Py_DECREF(s->frames[i].extra); bad = 1; } else PyList_SET_ITEM(frames, i, f);
        }
        if (bad || PyDict_SetItem(out, key, frames) < 0) Py_CLEAR(out);
        Py_XDECREF(frames); Py_XDECREF(key);
    }
    return out;
}

static PyObject *Pairing_get_pending(Pairing *self, void *closure) { (void)closure; return PyLong_FromSsize_t(self->pending); }
static PyObject *Pairing_get_max_pending(Pairing *self, void *c) { (void)c; return PyLong_FromSsize_t(self->max_pending); }
static PyObject *Pairing_get_max_depth(Pairing *self, void *c) { (void)c; return PyLong_FromSsize_t(self->max_depth); }

/* Pairing(frame_type, max_pending=65536, max_depth=4096): everything the methods touch is made here, in
 * tp_new, so no Pairing exists half-built (Pairing.__new__(Pairing) without a frame type raises). There is
 * no __init__ of its own: object.__init__ ignores the arguments, so calling it again changes nothing. The
 * type is final (not a BASETYPE): a subclass could not add state the C code would keep consistent. */
static PyObject *Pairing_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"frame_type", "max_pending", "max_depth", NULL};
    PyObject *frame_type;
    Py_ssize_t max_pending = 65536, max_depth = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!|nn:Pairing", names, &PyType_Type, &frame_type, &max_pending,
                                     &max_depth))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)frame_type, &PyTuple_Type) || max_depth < 1) {
        PyErr_SetString(PyExc_ValueError, "Pairing: a tuple type for frames, max_depth >= 1");
        return NULL;
    }
    Pairing *self = (Pairing *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->max_pending = max_pending;
    self->max_depth = max_depth;
    self->frame_type = Py_NewRef(frame_type);
    self->table_size = 64;
    if (!(self->probes = PyDict_New()) || !(self->names = PyList_New(0))
        || !(self->table = PyMem_Calloc(self->table_size, sizeof(Stack *)))) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int Pairing_traverse(Pairing *self, visitproc visit, void *arg) {
    for (Stack *s = self->head; s; s = s->next)
        for (Py_ssize_t i = 0; i < s->n; i++) Py_VISIT(s->frames[i].extra);
    Py_VISIT(self->frame_type);
    Py_VISIT(self->probes);
    Py_VISIT(self->names);
    return 0;
}

/* Forget every pending entry. The stacks are detached before any extra is released: releasing one may run
 * Python code (a finalizer) that uses this Pairing, which then finds it empty and consistent. */
static void forget_stacks(Pairing *self) {
    Stack *s = self->head;
    self->head = self->tail = NULL;
    self->nstacks = self->pending = 0;
    if (self->table) memset(self->table, 0, self->table_size * sizeof(Stack *));
    self->used = self->tombs = 0;
    for (Stack *next; s; s = next) {
        next = s->next;
        free_stack(s);
    }
}

/* tp_clear (a cycle through an entry's extra or the frame type): the Pairing stays usable, with no
 * pending entries and plain tuples for frames. */
static int Pairing_clear(Pairing *self) {
    forget_stacks(self);
    if (self->frame_type != (PyObject *)&PyTuple_Type) Py_XSETREF(self->frame_type, Py_NewRef((PyObject *)&PyTuple_Type));
    return 0;
}

static void Pairing_dealloc(Pairing *self) {
    PyObject_GC_UnTrack(self);
    forget_stacks(self);
    Py_CLEAR(self->frame_type);
    PyMem_Free(self->table);
    PyMem_Free(self->counts);
    Py_CLEAR(self->probes);
    Py_CLEAR(self->names);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Pairing_methods[] = {
    {"enter", (PyCFunction)(void (*)(void))Pairing_enter, METH_FASTCALL | METH_KEYWORDS, "Pairing.enter(probe, tid, sp, ts_ns, extra)"},
    {"leave", (PyCFunction)(void (*)(void))Pairing_leave, METH_FASTCALL, "Pairing.leave(probe, tid, sp)"},
    {"leave_matching", (PyCFunction)(void (*)(void))Pairing_leave_matching, METH_FASTCALL,
     "Pairing.leave_matching(probe, tid, want)"},
    {"set_entry_filtered", (PyCFunction)Pairing_set_entry_filtered, METH_O, "These probes' entries are filtered."},
    {"drop_empty", (PyCFunction)Pairing_drop_empty, METH_NOARGS, "Forget the empty stacks."},
    {"threads", (PyCFunction)Pairing_threads, METH_NOARGS, "Thread ids with pending entries."},
    {"evict_thread", (PyCFunction)Pairing_evict_thread, METH_O, "Forget a thread that exited."},
    {"counts", (PyCFunction)Pairing_counts, METH_NOARGS, "The per-probe counts of statistics()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Pairing_getset[] = {
    {"stacks", (getter)Pairing_get_stacks, NULL, "A copy of the stacks, as the Python class keeps them.", NULL},
    {"pending", (getter)Pairing_get_pending, NULL, "Pending entries.", NULL},
    {"max_pending", (getter)Pairing_get_max_pending, NULL, NULL, NULL},
    {"max_depth", (getter)Pairing_get_max_depth, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject PairingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uprobe_exporter._native.Pairing",
    .tp_basicsize = sizeof(Pairing),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Pairing_new,
    .tp_dealloc = (destructor)Pairing_dealloc,
    .tp_traverse = (traverseproc)Pairing_traverse,
    .tp_clear = (inquiry)Pairing_clear,
    .tp_methods = Pairing_methods,
    .tp_getset = Pairing_getset,
    .tp_doc = "Native pairing of entries and returns (see pairing.Pairing).",
};
