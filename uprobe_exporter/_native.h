/* What the two sources of the _native extension share: _pairing.c's Pairing, which _native.c's
 * emitters call without going through Python. */
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
#endif
