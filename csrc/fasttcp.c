/* kbypass._fasttcp: the TCP fast path (csrc/core/kb_tcp.h, header prediction and the established path's
 * frame builder), a CPython binding. This file parses arguments and builds the Python results; the core does
 * the checks, the checksums and the bytes.
 *
 * Shared state with Python: each Prediction object holds one connection's struct kb_tcp_pred (see kb_tcp.h
 * for what it is and is not). Python arms it from the connection (arm) and clears it (disarm); rx advances
 * it on a HIT. The prediction table is a dict Python owns, from a 48-bit int key (peer IPv4 << 16 | peer port)
 * << 16 | our port, to Prediction: rx looks the key up there (a dict lookup, no attribute by name). The
 * Prediction's owner (the endpoint's socket) is held for Python and never looked into.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "core/kb_tcp.h"

typedef struct {
    PyObject_HEAD
    struct kb_tcp_pred p;
    PyObject *owner;
} Pred;

static int ip4(PyObject *o, uint8_t out[4], const char *what) {
    if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) != 4) {
        PyErr_Format(PyExc_ValueError, "%s: give 4 address bytes (socket.inet_aton)", what);
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(o), 4);
    return 0;
}

static PyObject *Pred_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"local_ip", "local_port", "remote_ip", "remote_port", "owner", NULL};
    PyObject *lip, *rip, *owner = Py_None;
    unsigned short lport, rport;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OHOH|O", names, &lip, &lport, &rip, &rport, &owner)) return NULL;
    Pred *self = (Pred *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    if (ip4(lip, self->p.local_ip, "local_ip") || ip4(rip, self->p.remote_ip, "remote_ip")) {
        Py_DECREF(self);
        return NULL;
    }
    self->p.local_port = lport;
    self->p.remote_port = rport;
    Py_INCREF(owner);
    self->owner = owner;
    return (PyObject *)self;
}

static int Pred_traverse(Pred *self, visitproc visit, void *arg) {
    Py_VISIT(self->owner);
    return 0;
}

static int Pred_clear(Pred *self) {
    Py_CLEAR(self->owner);
    return 0;
}

static void Pred_dealloc(Pred *self) {
    PyObject_GC_UnTrack(self);
    Pred_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* arm(rcv_nxt, snd_una, snd_max, rcv_wnd, ts_ok, ts_recent, last_ack_sent): wire values */
static PyObject *Pred_arm(Pred *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "arm() takes 7 arguments (TcpConnection.prediction's tuple)");
        return NULL;
    }
    unsigned long v[7];
    for (int i = 0; i < 7; i++) {
        v[i] = PyLong_AsUnsignedLongMask(args[i]);
        if (v[i] == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    }
    struct kb_tcp_pred *p = &self->p;
    p->rcv_nxt = (uint32_t)v[0];
    p->snd_una = (uint32_t)v[1];
    p->snd_max = (uint32_t)v[2];
    p->rcv_wnd = v[3] > 0xFFFFFFFFul ? 0xFFFFFFFFu : (uint32_t)v[3];
    p->ts_ok = v[4] != 0;
    p->ts_recent = (uint32_t)v[5];
    p->last_ack_sent = (uint32_t)v[6];
    p->armed = 1;
    Py_RETURN_NONE;
}

static PyObject *Pred_disarm(Pred *self, PyObject *unused) {
    self->p.armed = 0;
    Py_RETURN_NONE;
}

static PyObject *Pred_state(Pred *self, PyObject *unused) {
    const struct kb_tcp_pred *p = &self->p;
    return Py_BuildValue("(kkkkikk)", (unsigned long)p->rcv_nxt, (unsigned long)p->snd_una, (unsigned long)p->snd_max,
                         (unsigned long)p->rcv_wnd, (int)p->ts_ok,
                         (unsigned long)p->ts_recent, (unsigned long)p->last_ack_sent);
}

static PyObject *Pred_get_armed(Pred *self, void *c) { return PyBool_FromLong(self->p.armed); }

/* owner is NULL once the garbage collector cleared a cycle through it (Pred_clear): read as None */
static PyObject *Pred_get_owner(Pred *self, void *c) {
    PyObject *o = self->owner ? self->owner : Py_None;
    Py_INCREF(o);
    return o;
}

static PyMethodDef Pred_methods[] = {
    {"arm", (PyCFunction)(void (*)(void))Pred_arm, METH_FASTCALL, "predict from the connection's fields"},
    {"disarm", (PyCFunction)Pred_disarm, METH_NOARGS, "predict nothing until the next arm"},
    {"state", (PyCFunction)Pred_state, METH_NOARGS, "the armed fields, in arm()'s order"},
    {NULL}};

/* where its struct kb_tcp_pred lives, for C in the same process that predicts as rx does (the preload shim,
 * csrc/preload/kbp_tcp.c), while the object lives */
static PyObject *Pred_get_address(Pred *self, void *c) { return PyLong_FromVoidPtr(&self->p); }

static PyGetSetDef Pred_getset[] = {{"armed", (getter)Pred_get_armed, NULL, "whether rx may predict", NULL},
                                    {"address", (getter)Pred_get_address, NULL, "its struct kb_tcp_pred's", NULL},
                                    {"owner", (getter)Pred_get_owner, NULL, "the object given at creation", NULL},
                                    {NULL}};

static PyTypeObject PredType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kbypass._fasttcp.Prediction",
    .tp_basicsize = sizeof(Pred),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Prediction(local_ip, local_port, remote_ip, remote_port, owner=None): one connection's next segment",
    .tp_new = Pred_new,
    .tp_dealloc = (destructor)Pred_dealloc,
    .tp_traverse = (traverseproc)Pred_traverse,
    .tp_clear = (inquiry)Pred_clear,
    .tp_methods = Pred_methods,
    .tp_getset = Pred_getset,
};

static PyObject *hit_tuple(PyObject *owner, const struct kb_tcp_hit *h, const char *frame) {
    if (!owner) owner = Py_None; /* cleared by the collector (Pred_clear): "O" would raise SystemError on NULL */
    PyObject *payload = PyBytes_FromStringAndSize(frame + h->payload_off, h->payload_len);
    if (!payload) return NULL;
    if (h->has_ts)
        return Py_BuildValue("(OkkiikkN)", owner, (unsigned long)h->seq, (unsigned long)h->ack, (int)h->flags,
                             (int)h->window, (unsigned long)h->tsval, (unsigned long)h->tsecr, payload);
    return Py_BuildValue("(OkkiiOON)", owner, (unsigned long)h->seq, (unsigned long)h->ack, (int)h->flags,
                         (int)h->window, Py_None, Py_None, payload);
}

/* rx(frame, table) -> None (slow path: no prediction for the frame's 4-tuple, or it missed) or
 * (owner, seq, ack, flags, window, tsval, tsecr, payload) for a HIT (tsval, tsecr None without timestamps) */
static PyObject *mod_rx(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "rx(frame, table): a frame and a dict of predictions");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0) return NULL;
    uint8_t ip[4];
    uint16_t sport, dport;
    PyObject *out = Py_None;
    if (kb_tcp_key(b.buf, (size_t)b.len, ip, &sport, &dport) == 0) {
        unsigned long long key = ((unsigned long long)((uint32_t)ip[0] << 24 | (uint32_t)ip[1] << 16 |
                                                       (uint32_t)ip[2] << 8 | ip[3]) << 32) |
                                 ((unsigned long long)sport << 16) | dport;
        PyObject *k = PyLong_FromUnsignedLongLong(key);
        if (!k) goto fail;
        PyObject *pred = PyDict_GetItemWithError(args[1], k); /* borrowed */
        Py_DECREF(k);
        if (!pred && PyErr_Occurred()) goto fail;
        struct kb_tcp_hit hit;
        if (pred && Py_TYPE(pred) == &PredType &&
            kb_tcp_predict(&((Pred *)pred)->p, b.buf, (size_t)b.len, &hit) == KB_TCP_HIT) {
            out = hit_tuple(((Pred *)pred)->owner, &hit, b.buf);
            PyBuffer_Release(&b);
            return out;
        }
    }
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&b);
    return NULL;
}

/* frame(eth, src_ip, dst_ip, ident, sport, dport, seq, ack, flags, window, ts, payload) -> bytes;
 * ts: None or (tsval, tsecr) */
static PyObject *mod_frame(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "frame() takes 12 arguments: eth, src_ip, dst_ip, ident, sport, dport, "
                                         "seq, ack, flags, window, ts, payload");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) != 14) {
        PyErr_SetString(PyExc_ValueError, "eth: give the 14-byte Ethernet header");
        return NULL;
    }
    struct kb_tcp_fields h;
    uint8_t src[4], dst[4];
    if (ip4(args[1], src, "src_ip") || ip4(args[2], dst, "dst_ip")) return NULL;
    h.eth = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    h.src_ip = src;
    h.dst_ip = dst;
    unsigned long v[7];
    for (int i = 0; i < 7; i++) {
        v[i] = PyLong_AsUnsignedLongMask(args[3 + i]);
        if (v[i] == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    }
    h.ident = (uint16_t)v[0];
    h.sport = (uint16_t)v[1];
    h.dport = (uint16_t)v[2];
    h.seq = (uint32_t)v[3];
    h.ack = (uint32_t)v[4];
    h.flags = (uint8_t)v[5];
    h.window = (uint16_t)v[6];
    h.has_ts = 0;
    h.tsval = h.tsecr = 0;
    PyObject *ts = args[10];
    if (ts != Py_None) {
        if (!PyTuple_Check(ts) || PyTuple_GET_SIZE(ts) != 2) {
            PyErr_SetString(PyExc_TypeError, "ts: None or (tsval, tsecr)");
            return NULL;
        }
        unsigned long a = PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(ts, 0));
        unsigned long c = PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(ts, 1));
        if (PyErr_Occurred()) return NULL;
        h.has_ts = 1;
        h.tsval = (uint32_t)a;
        h.tsecr = (uint32_t)c;
    }
    Py_buffer pl;
    if (PyObject_GetBuffer(args[11], &pl, PyBUF_SIMPLE) < 0) return NULL;
    size_t n = kb_tcp_frame_len(h.has_ts, (size_t)pl.len);
    if (n - 14 > 0xFFFF) {
        PyBuffer_Release(&pl);
        PyErr_Format(PyExc_ValueError, "an IPv4 packet of %zu bytes exceeds 65535", n - 14);
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (out) kb_tcp_frame((uint8_t *)PyBytes_AS_STRING(out), &h, pl.buf, (size_t)pl.len);
    PyBuffer_Release(&pl);
    return out;
}

#include "fasthttp.h" /* Canned and rx_canned: canned answers on the fast path */
#include "fastburst.h" /* rx_burst: rx_canned for a burst off a lane's ring */

static PyMethodDef mod_methods[] = {
    {"rx_canned", (PyCFunction)(void (*)(void))mod_rx_canned, METH_FASTCALL, "rx, answering canned requests in C"},
    {"rx_burst", (PyCFunction)(void (*)(void))mod_rx_burst, METH_FASTCALL, "rx_canned for a burst off a lane's ring"},
    {"send_canned", (PyCFunction)(void (*)(void))mod_send_canned, METH_FASTCALL, "a NEXT_SEND answer's frame"},
    {"rx", (PyCFunction)(void (*)(void))mod_rx, METH_FASTCALL, "header prediction of one frame (see module source)"},
    {"frame", (PyCFunction)(void (*)(void))mod_frame, METH_FASTCALL, "one established-path TCP frame"},
    {NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "kbypass._fasttcp",
                                    "TCP header prediction and frame building in C", -1, mod_methods};

PyMODINIT_FUNC PyInit__fasttcp(void) {
    if (PyType_Ready(&PredType) < 0 || PyType_Ready(&CannedType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&PredType);
    if (PyModule_AddObject(m, "Prediction", (PyObject *)&PredType) < 0) {
        Py_DECREF(&PredType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&CannedType);
    if (PyModule_AddObject(m, "Canned", (PyObject *)&CannedType) < 0) {
        Py_DECREF(&CannedType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddStringConstant(m, "SOCKPERF", KB_SOCKPERF_NAME) < 0 ||
        PyModule_AddStringConstant(m, "NEXT_SEND", KB_NEXT_SEND_NAME) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
