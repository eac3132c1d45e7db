/* Batch descriptors seen from C: kbypass.port.batch.DESC records (u64 addr, u32 len, u32 options) in any
 * 1-D array with any stride, read through the buffer protocol. Shared by the C modules in this directory
 * (each is its own extension, so these are static: one copy per module, no symbols between them). */
#ifndef KBYPASS_DESCS_H
#define KBYPASS_DESCS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    Py_buffer view;
    Py_ssize_t n, stride;
} descs_t;

/* A view of the descriptor array `obj` (writable when the caller sets lengths); release d->view after. */
static inline int get_descs(PyObject *obj, descs_t *d, int writable) {
    if (PyObject_GetBuffer(obj, &d->view, PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)))
        return -1;
    if (d->view.ndim != 1 || d->view.itemsize != 16) {
        PyBuffer_Release(&d->view);
        PyErr_SetString(PyExc_TypeError, "descriptors must be a 1-D array of kbypass.port.batch.DESC");
        return -1;
    }
    d->n = d->view.shape[0];
    d->stride = d->view.strides[0];
    return 0;
}

static inline uint64_t d_addr(const descs_t *d, Py_ssize_t i) {
    uint64_t a;
    memcpy(&a, (const char *)d->view.buf + i * d->stride, 8);
    return a;
}

static inline uint32_t d_len(const descs_t *d, Py_ssize_t i) {
    uint32_t n;
    memcpy(&n, (const char *)d->view.buf + i * d->stride + 8, 4);
    return n;
}

static inline void d_set_len(descs_t *d, Py_ssize_t i, uint32_t n) {
    memcpy((char *)d->view.buf + i * d->stride + 8, &n, 4);
}

#endif
