/* kbypass._fastlane: one UDP message at a time through an AF_XDP socket's rings, a CPython binding over
 * the C core's lane (csrc/core/kb_lane.h). This file parses arguments, holds the buffers, builds the
 * Python results and raises; the core does the ring, UMEM and UDP work.
 *
 * The narrow C boundary of design.md: the pure-Python lane in kbypass/port/lane.py (MessageLane) does the same
 * work and stays the reference; this module only removes the interpreter from the per-message path of
 * UdpEndpoint (about 8 us of Python per hop on the test VM, next to ~5 us of kernel). Everything that is
 * not one plain, valid UDP datagram to our address and port is handed back to Python unchanged.
 *
 * Shared state with Python, all in memory both sides read and write, never attributes looked up by name:
 * each ring's struct kb_ring (owned by the port's Ring, kbypass/xsk/ring.py: the cached producer/consumer
 * indexes the port's batch path uses too), the UMEM and its frame-state array (kbypass/xsk/umem.py), and
 * the port's counters (a u64 array, kb_port.h's indexes, kbypass.port.afxdp.PORT_STATS). The lane holds a
 * buffer of each (keeping them alive) until close().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>

#include "core/kb_lane.h"
#include "core/kb_port.h"

enum { V_RX, V_FILL, V_TX, V_COMP, V_UMEM, V_STATE, V_STATS, NVIEWS };

typedef struct {
    PyObject_HEAD
    struct kb_lane l;
    Py_buffer views[NVIEWS]; /* views[i].obj != NULL while held */
    uint8_t *scratch;        /* recv copies the packet here before it builds Python objects */
    uint32_t scratch_cap;    /* one UMEM frame, grown to the longest chain seen on a multi-buffer socket */
    int closed;
} Lane;

static void release_views(Lane *self) {
    for (int i = 0; i < NVIEWS; i++)
        if (self->views[i].obj) PyBuffer_Release(&self->views[i]);
}

static PyObject *Lane_close(Lane *self, PyObject *unused);

/* Before any call that touches the rings: the lane holds the rings' kb_ring structs, not the socket's ring
 * mappings, and closing the socket (XskSocket.close, Ring.release_views) clears the structs' pointers. A
 * lane whose rings went away under it closes itself and says so, instead of following NULL pointers. */
static int check_open(Lane *self) {
    if (self->closed) {
        PyErr_SetString(PyExc_ValueError, "the lane is closed");
        return -1;
    }
    struct kb_lane *l = &self->l;
    if (!kb_ring_valid(l->rx) || !kb_ring_valid(l->fill) || !kb_ring_valid(l->tx) || !kb_ring_valid(l->comp)) {
        Py_DECREF(Lane_close(self, NULL));
        PyErr_SetString(PyExc_ValueError, "the lane is closed: its port's socket (and rings) were closed under it");
        return -1;
    }
    return 0;
}

/* Raise `type` with `fmt` (one %s) naming `addr` as Python's hex() spells it: PyErr_Format has no %llx
 * before 3.12 (it printed the format itself). */
static void raise_at(PyObject *type, const char *fmt, uint64_t addr) {
    char hex[24];
    snprintf(hex, sizeof hex, "0x%llx", (unsigned long long)addr);
    PyErr_Format(type, fmt, hex);
}

/* The exception of a core error code (n: the frame's length, for the message). */
static PyObject *lane_error(Lane *self, int code, Py_ssize_t n) {
    switch (code) {
    case KB_LANE_E_RX_DESC:
        PyErr_SetString(PyExc_RuntimeError, "RX descriptor outside its UMEM frame");
        break;
    case KB_LANE_E_COMP_ADDR:
        raise_at(PyExc_IndexError, "completed address %s is outside the UMEM", self->l.bad_addr);
        break;
    case KB_LANE_E_TOO_BIG:
        if (self->l.chains)
            PyErr_Format(PyExc_ValueError, "frame of %zd bytes does not fit a chain of %u frames of %u bytes", n,
                         self->l.max_frames, self->l.tx_room);
        else
            PyErr_Format(PyExc_ValueError, "frame of %zd bytes does not fit a %u-byte UMEM frame", n,
                         self->l.frame_size);
        break;
    case KB_LANE_E_STASH:
        PyErr_SetString(PyExc_RuntimeError, "stash frame outside the UMEM");
        break;
    case KB_LANE_E_SYS:
        errno = self->l.sys_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        break;
    case KB_LANE_E_NOT_APP:
        raise_at(PyExc_ValueError, "frame %s is not an application-held frame of this UMEM", self->l.bad_addr);
        break;
    default:
        PyErr_Format(PyExc_SystemError, "kb_lane error %d", code);
    }
    return NULL;
}

/* A writable, C-contiguous buffer of obj in views[i], of exactly `len` bytes when len > 0, aligned to
 * `align`. */
static int hold(Lane *self, int i, PyObject *obj, Py_ssize_t len, size_t align, const char *what) {
    if (PyObject_GetBuffer(obj, &self->views[i], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)) return -1;
    Py_buffer *v = &self->views[i];
    if ((len > 0 && v->len != len) || (uintptr_t)v->buf % align) {
        PyBuffer_Release(v);
        PyErr_Format(PyExc_ValueError, "%s: a writable buffer of %zd bytes, %zu-aligned", what, len, align);
        return -1;
    }
    return 0;
}

static int Lane_init(Lane *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"rx", "fill", "tx", "comp", "umem", "state", "stats", "frame_size", "fd", "mac",
                             "ip", "udp_port", "bcast", "copy", "busy", "busy_every", "stash", "chains",
                             "tx_room", "max_frames", NULL};
    PyObject *ring_o[4], *umem, *state, *stats;
    unsigned int frame_size, udp_port, busy_every = 16, stash = 32, tx_room = 0, max_frames = 0;
    int fd, copy_mode, busy, chains = 0;
    Py_buffer mac, ip, bcast;
    bcast.buf = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOIiy*y*Iz*pp|IIpII", kwlist, &ring_o[0],
                                     &ring_o[1], &ring_o[2], &ring_o[3], &umem, &state, &stats, &frame_size, &fd,
                                     &mac, &ip, &udp_port, &bcast, &copy_mode, &busy, &busy_every, &stash, &chains,
                                     &tx_room, &max_frames))
        return -1;
    int rc = -1;
    self->closed = 1; /* a failed re-__init__ must not leave a lane that works on released buffers */
    release_views(self);
    if (mac.len != 6 || ip.len != 4 || (bcast.buf && bcast.len != 4)) {
        PyErr_SetString(PyExc_ValueError, "mac must be 6 bytes, ip and bcast 4");
        goto out;
    }
    if (udp_port > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "bad frame_size, stash, udp_port or busy_every");
        goto out;
    }
    static const char *names[4] = {"rx", "fill", "tx", "comp"};
    for (int i = 0; i < 4; i++)
        if (hold(self, V_RX + i, ring_o[i], sizeof(struct kb_ring), _Alignof(struct kb_ring), names[i])) goto out;
    if (hold(self, V_UMEM, umem, 0, 1, "umem") || hold(self, V_STATE, state, 0, 1, "state") ||
        hold(self, V_STATS, stats, KB_PORT_NSTATS * sizeof(uint64_t), _Alignof(uint64_t), "stats"))
        goto out;
    struct kb_lane *l = &self->l;
    memset(l, 0, sizeof(*l));
    l->rx = self->views[V_RX].buf;
    l->fill = self->views[V_FILL].buf;
    l->tx = self->views[V_TX].buf;
    l->comp = self->views[V_COMP].buf;
    l->umem = self->views[V_UMEM].buf;
    l->umem_size = (uint64_t)self->views[V_UMEM].len;
    l->state = self->views[V_STATE].buf;
    l->stats = self->views[V_STATS].buf;
    l->frame_size = frame_size;
    l->fd = fd;
    l->copy_mode = copy_mode;
    l->busy = busy;
    l->busy_every = busy_every;
    l->stash_cap = stash > KB_LANE_STASH_SLOTS ? -1 : (int)stash;
    memcpy(l->me.mac, mac.buf, 6);
    memcpy(l->me.ip, ip.buf, 4);
    l->me.has_bcast = bcast.buf != NULL;
    if (bcast.buf) memcpy(l->me.bcast, bcast.buf, 4);
    l->me.port = (uint16_t)udp_port;
    l->chains = chains;
    l->tx_room = tx_room;
    l->max_frames = max_frames;
    int r = kb_lane_setup(l);
    if (r == KB_LANE_E_RINGS) {
        PyErr_SetString(PyExc_ValueError, "ring size must be a power of two (and the ring mapped)");
        goto out;
    }
    if (r) {
        PyErr_SetString(PyExc_ValueError, "bad frame_size (or a UMEM that is not whole frames), stash, udp_port, "
                                          "busy_every, or (chains) tx_room or max_frames");
        goto out;
    }
    if ((uint64_t)self->views[V_STATE].len < (l->umem_size >> l->shift)) {
        PyErr_SetString(PyExc_ValueError, "state must hold one byte per frame of the UMEM");
        goto out;
    }
    PyMem_Free(self->scratch);
    self->scratch_cap = 0;
    if (!(self->scratch = PyMem_Malloc(l->frame_size))) {
        PyErr_NoMemory();
        goto out;
    }
    self->scratch_cap = l->frame_size;
    self->closed = 0;
    rc = 0;
out:
    if (rc) release_views(self);
    PyBuffer_Release(&mac);
    PyBuffer_Release(&ip);
    if (bcast.buf) PyBuffer_Release(&bcast);
    return rc;
}

/* A lane is closed until __init__ succeeds: Lane.__new__(Lane).recv() is an error, not a NULL ring. */
static PyObject *Lane_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Lane *self = (Lane *)type->tp_alloc(type, 0);
    if (self) self->closed = 1;
    return (PyObject *)self;
}

static void Lane_dealloc(Lane *self) {
    release_views(self);
    PyMem_Free(self->scratch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* recv() -> None (ring empty), (payload, src_ip4, src_port) for a plain UDP datagram to us, the whole
 * packet as bytes for everything else (Python's slow path), or NotImplemented when the fill ring has no
 * free slot for its frames (the Python lane then takes it: it cannot happen with the port's quotas). On a
 * multi-buffer socket a packet is a chain of frames, gathered here. */
static PyObject *Lane_recv(Lane *self, PyObject *unused) {
    if (check_open(self)) return NULL;
    /* Copy the packet out and hand its frames back to the kernel before any Python object is made: making
     * one can run a garbage collection, and a finalizer may use (or close) this port's rings meanwhile. */
    uint32_t n;
    int r = kb_lane_rx_copy(&self->l, self->scratch, self->scratch_cap, &n);
    if (r == KB_LANE_E_TOO_BIG) { /* a chain longer than any before: grow the buffer (no Python object made) */
        uint8_t *more = PyMem_Realloc(self->scratch, n);
        if (!more) return PyErr_NoMemory();
        self->scratch = more;
        self->scratch_cap = n;
        r = kb_lane_rx_copy(&self->l, self->scratch, self->scratch_cap, &n);
    }
    if (r == KB_LANE_EMPTY) Py_RETURN_NONE;
    if (r == KB_LANE_FILL_FULL) Py_RETURN_NOTIMPLEMENTED;
    if (r == KB_LANE_E_TOO_BIG) /* it changed between the two looks: the ring is not the kernel's alone */
        return PyErr_Format(PyExc_RuntimeError, "received packet of %u bytes outgrew the %u-byte receive buffer",
                            n, self->scratch_cap);
    if (r != KB_LANE_FRAME) return lane_error(self, r, 0);
    const uint8_t *f = self->scratch;
    if (kb_udp_accept(&self->l.me, f, n))
        return Py_BuildValue("(y#y#i)", (const char *)f + KB_UDP_HLEN, (Py_ssize_t)kb_udp_payload_len(f),
                             (const char *)kb_udp_src_ip(f), (Py_ssize_t)4, (int)kb_udp_src_port(f));
    return PyBytes_FromStringAndSize((const char *)f, n);
}

static PyObject *Lane_wake(Lane *self, PyObject *unused) {
    if (check_open(self)) return NULL;
    kb_lane_wake(&self->l);
    Py_RETURN_NONE;
}

/* 1 sent, 0 no TX slot, -1 stash empty (give() frames first) */
static PyObject *sent(Lane *self, int r, Py_ssize_t n) {
    if (r == KB_LANE_SENT) return PyLong_FromLong(1);
    if (r == KB_LANE_NO_SLOT) return PyLong_FromLong(0);
    if (r == KB_LANE_NO_FRAME) return PyLong_FromLong(-1);
    return lane_error(self, r, n);
}

/* send_udp(template42, payload, ident) -> 1 sent, 0 no TX slot, -1 stash empty (give() frames first) */
static PyObject *Lane_send_udp(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_udp(template, payload, ident)");
        return NULL;
    }
    if (check_open(self)) return NULL;
    Py_buffer t, p;
    if (PyObject_GetBuffer(args[0], &t, PyBUF_SIMPLE)) return NULL;
    if (PyObject_GetBuffer(args[1], &p, PyBUF_SIMPLE)) {
        PyBuffer_Release(&t);
        return NULL;
    }
    long ident = PyLong_AsLong(args[2]);
    PyObject *r = NULL;
    if (ident == -1 && PyErr_Occurred()) goto out;
    if (t.len != KB_UDP_HLEN) {
        PyErr_SetString(PyExc_ValueError, "the UDP template must be the 42 header bytes");
        goto out;
    }
    if (p.len > KB_UDP_MAX_PAYLOAD) {
        PyErr_SetString(PyExc_ValueError, "UDP payload above 65507 bytes");
        goto out;
    }
    r = sent(self, kb_lane_send(&self->l, t.buf, KB_UDP_HLEN, p.buf, (uint32_t)p.len, 1, (uint16_t)ident),
             t.len + p.len);
out:
    PyBuffer_Release(&t);
    PyBuffer_Release(&p);
    return r;
}

/* send_frame(frame) -> like send_udp, for a whole frame built elsewhere (ARP, ICMP answers). */
static PyObject *Lane_send_frame(Lane *self, PyObject *arg) {
    if (check_open(self)) return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE)) return NULL;
    PyObject *r = b.len > UINT32_MAX ? lane_error(self, KB_LANE_E_TOO_BIG, b.len)
                                     : sent(self, kb_lane_send(&self->l, b.buf, (uint32_t)b.len, NULL, 0, 0, 0), b.len);
    PyBuffer_Release(&b);
    return r;
}

/* give(addrs): frames in state APP from the port's alloc() for the stash; returns how many it took. */
static PyObject *Lane_give(Lane *self, PyObject *arg) {
    if (check_open(self)) return NULL;
    PyObject *seq = PySequence_Fast(arg, "give() takes a sequence of frame addresses");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), k = 0;
    for (; k < n; k++) {
        unsigned long long a = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, k));
        if (a == (unsigned long long)-1 && PyErr_Occurred()) break;
        int r = kb_lane_give(&self->l, a);
        if (r == 0) break;
        if (r < 0) {
            lane_error(self, r, 0);
            break;
        }
    }
    Py_DECREF(seq);
    return PyErr_Occurred() ? NULL : PyLong_FromSsize_t(k);
}

/* take_stash() -> list of the stash's frame addresses (state APP), emptying it. */
static PyObject *Lane_take_stash(Lane *self, PyObject *unused) {
    PyObject *out = PyList_New(self->l.nstash);
    if (!out) return NULL;
    for (int i = 0; i < self->l.nstash; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(self->l.stash[i]);
        if (!v) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    self->l.nstash = 0;
    return out;
}

static PyObject *Lane_reclaim(Lane *self, PyObject *unused) {
    if (check_open(self)) return NULL;
    int n = kb_lane_reclaim(&self->l);
    return n < 0 ? lane_error(self, n, 0) : PyLong_FromLong(n);
}

/* close(): let go of the port's memory (before the port unmaps it). */
static PyObject *Lane_close(Lane *self, PyObject *unused) {
    self->closed = 1;
    release_views(self);
    memset(&self->l, 0, offsetof(struct kb_lane, nstash)); /* no pointer into released buffers remains */
    Py_RETURN_NONE;
}

static PyObject *Lane_get_stashed(Lane *self, void *c) { return PyLong_FromLong(self->l.nstash); }

static void core_release(PyObject *capsule) { Py_XDECREF((PyObject *)PyCapsule_GetContext(capsule)); }

/* core: the lane's struct kb_lane for another binding (KB_LANE_CAPSULE); it checks the rings itself, as close()
 * clears their pointers */
static PyObject *Lane_get_core(Lane *self, void *c) {
    if (check_open(self)) return NULL;
    PyObject *cap = PyCapsule_New(&self->l, KB_LANE_CAPSULE, core_release);
    if (!cap) return NULL;
    Py_INCREF(self);
    if (PyCapsule_SetContext(cap, self) < 0) {
        Py_DECREF(self);
        Py_DECREF(cap);
        return NULL;
    }
    return cap;
}

static PyObject *Lane_get_defer_kick(Lane *self, void *c) { return PyBool_FromLong(self->l.defer_kick); }

/* defer_kick = True: sends never kick (a full TX ring aside); the owner kicks once for a batch (flush_tx). */
static int Lane_set_defer_kick(Lane *self, PyObject *v, void *c) {
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "defer_kick cannot be deleted");
        return -1;
    }
    int on = PyObject_IsTrue(v);
    if (on < 0) return -1;
    self->l.defer_kick = on;
    return 0;
}

static PyMethodDef Lane_methods[] = {
    {"recv", (PyCFunction)Lane_recv, METH_NOARGS, "one frame off the RX ring (see module source)"},
    {"wake", (PyCFunction)Lane_wake, METH_NOARGS, "nothing on the ring: let the kernel make progress"},
    {"send_udp", (PyCFunction)(void (*)(void))Lane_send_udp, METH_FASTCALL, "template, payload, ident"},
    {"send_frame", (PyCFunction)Lane_send_frame, METH_O, "send one whole frame"},
    {"give", (PyCFunction)Lane_give, METH_O, "frame addresses for the stash"},
    {"take_stash", (PyCFunction)Lane_take_stash, METH_NOARGS, "empty the stash, returning its frames"},
    {"reclaim", (PyCFunction)Lane_reclaim, METH_NOARGS, "completions into the stash"},
    {"close", (PyCFunction)Lane_close, METH_NOARGS, "let go of the port's memory"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Lane_getset[] = {
    {"stashed", (getter)Lane_get_stashed, NULL, "frames held in the stash (state APP)", NULL},
    {"core", (getter)Lane_get_core, NULL, "the lane's C struct, as a capsule (kbypass._fasttcp.rx_burst)", NULL},
    {"defer_kick", (getter)Lane_get_defer_kick, (setter)Lane_set_defer_kick,
     "sends leave the kick to the owner's flush_tx (one for a batch)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kbypass._fastlane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One AF_XDP socket's rings, one UDP message at a time (see kbypass.port.lane.MessageLane, its Python twin).",
    .tp_new = Lane_new,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
    .tp_getset = Lane_getset,
};

#define SPIN_MAX_LANES 64

/* spin(lanes, seconds) -> bool: kb_lanes_spin over a tuple of Lanes (busy polling's wait; True: a frame is on
 * one of their RX rings) */
static PyObject *mod_spin(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[0]) || PyTuple_GET_SIZE(args[0]) > SPIN_MAX_LANES) {
        PyErr_SetString(PyExc_TypeError, "spin(lanes, seconds): a tuple of at most 64 Lanes and the seconds");
        return NULL;
    }
    double s = PyFloat_AsDouble(args[1]);
    if (s == -1.0 && PyErr_Occurred()) return NULL;
    struct kb_lane *ls[SPIN_MAX_LANES];
    int n = (int)PyTuple_GET_SIZE(args[0]);
    for (int i = 0; i < n; i++) {
        PyObject *o = PyTuple_GET_ITEM(args[0], i);
        if (Py_TYPE(o) != &LaneType) {
            PyErr_SetString(PyExc_TypeError, "spin(lanes, seconds): lanes must be kbypass._fastlane.Lane objects");
            return NULL;
        }
        if (check_open((Lane *)o)) return NULL;
        ls[i] = &((Lane *)o)->l;
    }
    return PyBool_FromLong(kb_lanes_spin(ls, n, s > 0 ? (uint64_t)(s * 1e9) : 0));
}

static PyMethodDef mod_methods[] = {
    {"spin", (PyCFunction)(void (*)(void))mod_spin, METH_FASTCALL, "busy polling's wait over lanes"}, {NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "kbypass._fastlane",
                                    "UdpEndpoint's per-message ring path in C.", -1, mod_methods};

/* The layouts Python must share with the core: PORT_STATS (kb_port.h's index names, in order) and
 * RING_LAYOUT (struct kb_ring's member offsets and "sizeof"), which tests hold kbypass to. */
static int add_layouts(PyObject *m) {
    static const char *stat_names[] = KB_PORT_STAT_NAMES;
    PyObject *names = PyTuple_New(KB_PORT_NSTATS);
    if (!names) return -1;
    for (int i = 0; i < KB_PORT_NSTATS; i++) {
        PyObject *s = PyUnicode_FromString(stat_names[i]);
        if (!s) {
            Py_DECREF(names);
            return -1;
        }
        PyTuple_SET_ITEM(names, i, s);
    }
    if (PyModule_AddObject(m, "PORT_STATS", names)) {
        Py_DECREF(names);
        return -1;
    }
    PyObject *ring = Py_BuildValue(
        "{sn sn sn sn sn sn sn sn sn}", "cached_prod", (Py_ssize_t)offsetof(struct kb_ring, cached_prod),
        "cached_cons", (Py_ssize_t)offsetof(struct kb_ring, cached_cons), "mask",
        (Py_ssize_t)offsetof(struct kb_ring, mask), "size", (Py_ssize_t)offsetof(struct kb_ring, size), "producer",
        (Py_ssize_t)offsetof(struct kb_ring, producer), "consumer", (Py_ssize_t)offsetof(struct kb_ring, consumer),
        "ring", (Py_ssize_t)offsetof(struct kb_ring, ring), "flags", (Py_ssize_t)offsetof(struct kb_ring, flags),
        "sizeof", (Py_ssize_t)sizeof(struct kb_ring));
    if (!ring || PyModule_AddObject(m, "RING_LAYOUT", ring)) {
        Py_XDECREF(ring);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__fastlane(void) {
    if (PyType_Ready(&LaneType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    if (add_layouts(m)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
