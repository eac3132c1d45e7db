/* pydescs.h: the CPython side of kb_descs.h, shared by the binding modules in this directory (each is its
 * own extension, so this is static: one copy per module, no symbols between them). */
#ifndef KBYPASS_PYDESCS_H
#define KBYPASS_PYDESCS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "core/kb_descs.h"

/* A view of the descriptor array `obj` (writable when the caller sets lengths) in *view, described for the
 * core in *d; release *view after. */
static inline int get_descs(PyObject *obj, Py_buffer *view, struct kb_descs *d, int writable) {
    if (PyObject_GetBuffer(obj, view, PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)))
        return -1;
    if (view->ndim != 1 || view->itemsize != 16) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "descriptors must be a 1-D array of kbypass.port.batch.DESC");
        return -1;
    }
    d->base = view->buf;
    d->n = (size_t)view->shape[0];
    d->stride = view->strides[0];
    return 0;
}

#endif
