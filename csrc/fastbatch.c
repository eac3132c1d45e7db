/* kbypass._fastbatch: the per-batch bookkeeping of the Port API in C.
 *
 * Every Mpps path (sink, reflect, the AF_XDP generator) runs receive -> header rewrite -> transmit per
 * batch. In numpy each of these is a dozen small calls (a reduction alone costs ~3 us here), ~150 us per
 * batch whatever its size: more than the kernel's copy-mode work for batches of a few hundred frames.
 * These functions do the same work in one pass each. The numpy code in kbypass/xsk/umem.py and
 * kbypass/port/batch.py stays the reference and the fallback, and produces the error messages: when a
 * check here fails, nothing has changed and the caller runs the numpy path, which raises the precise
 * error.
 *
 * Descriptors are kbypass.port.batch.DESC records (u64 addr, u32 len, u32 options), any stride.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "descs.h"

static int get_bytes(PyObject *obj, Py_buffer *b, int writable) {
    return PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0));
}

/* The UMEM's frame-state array (writable u8) and a descriptor array, both or neither. */
static int get_state_and_descs(PyObject *state_o, PyObject *descs_o, Py_buffer *st, descs_t *d) {
    if (get_bytes(state_o, st, 1)) return -1;
    if (get_descs(descs_o, d, 0)) {
        PyBuffer_Release(st);
        return -1;
    }
    return 0;
}

/* The packet memory (writable) and descriptors of a header rewrite, both or neither, checked: *bad is the
 * index of the first frame shorter than `need` bytes (-1: none), and a frame whose first `need` bytes lie
 * outside the memory is an IndexError. Returns -1 with an exception set, else 0 (release both after). */
static int open_frames(PyObject *mem_o, PyObject *descs_o, uint64_t need, Py_buffer *mem, descs_t *d,
                       Py_ssize_t *bad) {
    if (get_bytes(mem_o, mem, 1)) return -1;
    if (get_descs(descs_o, d, 0)) {
        PyBuffer_Release(mem);
        return -1;
    }
    *bad = -1;
    for (Py_ssize_t i = 0; i < d->n; i++) {
        uint64_t a = d_addr(d, i);
        if (d_len(d, i) < need) {
            *bad = i;
            return 0;
        }
        if (a > (uint64_t)mem->len || (uint64_t)mem->len - a < need) {
            PyBuffer_Release(mem);
            PyBuffer_Release(&d->view);
            PyErr_Format(PyExc_IndexError, "frame %zd at 0x%llx is outside the packet memory", i,
                         (unsigned long long)a);
            return -1;
        }
    }
    return 0;
}

/* swap(mem, descs, offset, width, need) -> -1, or the index of the first frame shorter than `need`
 * (then nothing was swapped). Swaps bytes [offset, offset+width) with [offset+width, offset+2*width) in
 * every frame: MAC, IPv4 address and port swaps of a reflector. */
static PyObject *swap(PyObject *self, PyObject *args) {
    PyObject *mem_o, *descs_o;
    Py_ssize_t offset, width, need;
    if (!PyArg_ParseTuple(args, "OOnnn", &mem_o, &descs_o, &offset, &width, &need)) return NULL;
    /* Written as subtractions: `offset + 2 * width` wraps for a huge offset and let a swap past the frame. */
    if (offset < 0 || width <= 0 || width > 64 || need < offset || need - offset < 2 * width) {
        PyErr_SetString(PyExc_ValueError, "swap: bad offset, width or need");
        return NULL;
    }
    Py_buffer mem;
    descs_t d;
    Py_ssize_t bad;
    if (open_frames(mem_o, descs_o, (uint64_t)need, &mem, &d, &bad)) return NULL;
    if (bad < 0) {
        uint8_t tmp[64];
        for (Py_ssize_t i = 0; i < d.n; i++) {
            uint8_t *p = (uint8_t *)mem.buf + d_addr(&d, i) + offset;
            memcpy(tmp, p, width);
            memcpy(p, p + width, width);
            memcpy(p + width, tmp, width);
        }
    }
    PyBuffer_Release(&mem);
    PyBuffer_Release(&d.view);
    return PyLong_FromSsize_t(bad);
}

/* claim(state, descs, shift, umem_size, frame_size, expected, to, tx) -> the total length of descs when
 * every frame of descs is inside the UMEM, in state `expected` and listed once (and, with tx, has a
 * length > 0 that stays inside its frame); then all of them are in state `to`. -1: nothing changed (all
 * or nothing). */
static PyObject *claim(PyObject *self, PyObject *args) {
    PyObject *state_o, *descs_o;
    unsigned int shift, frame_size, expected, to;
    unsigned long long umem_size;
    int tx;
    if (!PyArg_ParseTuple(args, "OOIKIIIp", &state_o, &descs_o, &shift, &umem_size, &frame_size, &expected,
                          &to, &tx))
        return NULL;
    if (expected == to || expected > 255 || to > 255 || frame_size == 0 || shift > 31 ||
        (1ull << shift) != frame_size) {
        PyErr_SetString(PyExc_ValueError, "claim: bad states, shift or frame size");
        return NULL;
    }
    Py_buffer st;
    descs_t d;
    if (get_state_and_descs(state_o, descs_o, &st, &d)) return NULL;
    uint8_t *state = st.buf;
    uint64_t frames = (uint64_t)st.len;
    long long total = 0;
    Py_ssize_t i = 0;
    int ok = 1;
    for (; i < d.n; i++) {
        uint64_t a = d_addr(&d, i);
        if (a >= umem_size || (a >> shift) >= frames) {
            ok = 0;
            break;
        }
        if (tx) {
            uint32_t n = d_len(&d, i);
            if (n == 0 || (a & (frame_size - 1)) + n > frame_size) {
                ok = 0;
                break;
            }
        }
        uint8_t *s = &state[a >> shift];
        if (*s != expected) { /* wrong owner, or this frame already appeared in this batch */
            ok = 0;
            break;
        }
        *s = (uint8_t)to;
        total += d_len(&d, i);
    }
    if (!ok) /* put back what this call changed */
        for (Py_ssize_t j = 0; j < i; j++) state[d_addr(&d, j) >> shift] = (uint8_t)expected;
    PyBuffer_Release(&st);
    PyBuffer_Release(&d.view);
    return PyLong_FromLongLong(ok ? total : -1);
}

/* push_free(state, free, top, addrs, shift) -> new top: frames the kernel completed (trusted addresses,
 * u64) back on the free stack (an intp array of frame numbers) and in state FREE (1). */
static PyObject *push_free(PyObject *self, PyObject *args) {
    PyObject *state_o, *free_o, *addrs_o;
    Py_ssize_t top;
    unsigned int shift;
    if (!PyArg_ParseTuple(args, "OOnOI", &state_o, &free_o, &top, &addrs_o, &shift)) return NULL;
    Py_buffer st, fr, ad;
    if (get_bytes(state_o, &st, 1)) return NULL;
    if (get_bytes(free_o, &fr, 1)) {
        PyBuffer_Release(&st);
        return NULL;
    }
    if (get_bytes(addrs_o, &ad, 0)) {
        PyBuffer_Release(&st);
        PyBuffer_Release(&fr);
        return NULL;
    }
    PyObject *r = NULL;
    Py_ssize_t n = ad.len / 8, cap = fr.len / (Py_ssize_t)sizeof(Py_ssize_t);
    if (shift > 31 || ad.len % 8 || top < 0 || top > cap || n > cap - top) { /* `top + n` could wrap */
        PyErr_SetString(PyExc_ValueError, "push_free: bad shift, addresses or free-stack size");
        goto out;
    }
    const uint64_t *a = ad.buf;
    Py_ssize_t *stack = fr.buf;
    uint8_t *state = st.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t f = a[i] >> shift;
        if (f >= (uint64_t)st.len) {
            PyErr_Format(PyExc_IndexError, "completed address 0x%llx is outside the UMEM", (unsigned long long)a[i]);
            goto out;
        }
        state[f] = 1;
        stack[top + i] = (Py_ssize_t)f;
    }
    r = PyLong_FromSsize_t(top + n);
out:
    PyBuffer_Release(&st);
    PyBuffer_Release(&fr);
    PyBuffer_Release(&ad);
    return r;
}

/* mark(state, descs, shift, to) -> total length: frames the kernel handed us (RX) in state `to`, and
 * the byte count for the statistics, in one pass. Addresses come from the kernel; still checked. */
static PyObject *mark(PyObject *self, PyObject *args) {
    PyObject *state_o, *descs_o;
    unsigned int shift, to;
    if (!PyArg_ParseTuple(args, "OOII", &state_o, &descs_o, &shift, &to)) return NULL;
    if (shift > 31 || to > 255) {
        PyErr_SetString(PyExc_ValueError, "mark: bad shift or state");
        return NULL;
    }
    Py_buffer st;
    descs_t d;
    if (get_state_and_descs(state_o, descs_o, &st, &d)) return NULL;
    uint8_t *state = st.buf;
    unsigned long long total = 0;
    PyObject *r = NULL;
    for (Py_ssize_t i = 0; i < d.n; i++) {
        uint64_t f = d_addr(&d, i) >> shift;
        if (f >= (uint64_t)st.len) {
            PyErr_Format(PyExc_IndexError, "descriptor %zd points outside the UMEM", i);
            goto out;
        }
        state[f] = (uint8_t)to;
        total += d_len(&d, i);
    }
    r = PyLong_FromUnsignedLongLong(total);
out:
    PyBuffer_Release(&st);
    PyBuffer_Release(&d.view);
    return r;
}

/* stamp(mem, descs, offset, first_seq, now_ns) -> -1, or the index of the first frame shorter than
 * offset + 16 (then nothing was written). Frame i gets the generator's stamp at `offset`: first_seq + i
 * and now_ns, each a big-endian u64 (kbypass.gen.stamp). numpy needs a 16-byte gather-scatter for this,
 * ~75 us for a batch of 2048 frames here, as much as the rest of the generator's user-space work. */
static PyObject *stamp(PyObject *self, PyObject *args) {
    PyObject *mem_o, *descs_o;
    Py_ssize_t offset;
    unsigned long long first, now;
    if (!PyArg_ParseTuple(args, "OOnKK", &mem_o, &descs_o, &offset, &first, &now)) return NULL;
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "stamp: negative offset");
        return NULL;
    }
    Py_buffer mem;
    descs_t d;
    Py_ssize_t bad;
    if (open_frames(mem_o, descs_o, (uint64_t)offset + 16, &mem, &d, &bad)) return NULL;
    if (bad < 0) {
        uint64_t t = __builtin_bswap64((uint64_t)now);
        for (Py_ssize_t i = 0; i < d.n; i++) {
            uint8_t *p = (uint8_t *)mem.buf + d_addr(&d, i) + offset;
            uint64_t s = __builtin_bswap64((uint64_t)first + (uint64_t)i);
            memcpy(p, &s, 8);
            memcpy(p + 8, &t, 8);
        }
    }
    PyBuffer_Release(&mem);
    PyBuffer_Release(&d.view);
    return PyLong_FromSsize_t(bad);
}

static PyMethodDef methods[] = {
    {"swap", swap, METH_VARARGS, "swap(mem, descs, offset, width, need) -> -1 or first short frame"},
    {"claim", claim, METH_VARARGS, "claim(state, descs, shift, umem_size, frame_size, expected, to, tx)"},
    {"mark", mark, METH_VARARGS, "mark(state, descs, shift, to) -> total length"},
    {"push_free", push_free, METH_VARARGS, "push_free(state, free, top, addrs, shift) -> new top"},
    {"stamp", stamp, METH_VARARGS, "stamp(mem, descs, offset, first_seq, now_ns) -> -1 or first short frame"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "kbypass._fastbatch",
                                    "The Port API's per-batch bookkeeping in C.", -1, methods};

PyMODINIT_FUNC PyInit__fastbatch(void) { return PyModule_Create(&moddef); }
