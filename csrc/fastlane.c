/* kbypass._fastlane: one UDP message at a time through an AF_XDP socket's rings, in C.
 *
 * The narrow C boundary of design.md: the pure-Python lane in kbypass/endpoint.py (_Lane) does the same
 * work and stays the reference; this module only removes the interpreter from the per-message path of
 * UdpEndpoint (about 8 us of Python per hop on the test VM, next to ~5 us of kernel). Everything that is
 * not one plain, valid UDP datagram to our address and port is handed back to Python unchanged.
 *
 * Shared state with Python. The rings are the port's Ring objects (kbypass/xsk/ring.py): their cached
 * producer/consumer indexes live in Python attributes, and the port's own numpy batch path uses them too,
 * so every call here reads those attributes first and writes them back before it returns. UMEM frame
 * states (the uint8 array of kbypass/xsk/umem.py) and the port's counters dict and in-flight counts are
 * updated exactly as the Python lane updates them, so the port's ownership check keeps holding.
 *
 * Memory ordering: index loads are acquire and index stores are release (the kernel's xsk_queue.h rules),
 * written with the compiler's atomics so the code is right on any CPU (ring.py explains the x86 case).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define XDP_RING_NEED_WAKEUP 1u
#define ST_FILL 2 /* kbypass/xsk/umem.py frame states */
#define ST_APP 4
#define ST_TX 8
#define STASH_MAX 64

typedef struct {
    uint32_t *producer, *consumer, *flags;
    void *slots;
    uint32_t mask, size;
    PyObject *obj; /* the Python Ring: holds cached_prod / cached_cons */
} ring_t;

typedef struct {
    PyObject_HEAD
    ring_t rx, fill, tx, comp;
    uint8_t *umem;
    uint64_t umem_size, chunk_mask;
    uint8_t *state;
    uint32_t shift, frame_size;
    int fd, copy_mode, busy;
    PyObject *port, *counters;
    uint8_t mac[6], ip[4], bcast[4];
    int has_bcast;
    uint16_t udp_port;
    uint64_t stash[STASH_MAX];
    int nstash, stash_cap;
    unsigned empty_looks, busy_every;
    int closed;
} Lane;

typedef struct { uint64_t addr; uint32_t len; uint32_t options; } xdp_desc;

static PyObject *s_cached_prod, *s_cached_cons, *s_in_tx, *s_in_fill;
static PyObject *s_rx_packets, *s_rx_bytes, *s_tx_packets, *s_tx_bytes, *s_tx_kicks, *s_tx_completed;

/* ---------------------------------------------------------------------------------- small helpers */

static int get_u32_attr(PyObject *o, PyObject *name, uint32_t *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (!v) return -1;
    unsigned long x = PyLong_AsUnsignedLong(v);
    Py_DECREF(v);
    if (x == (unsigned long)-1 && PyErr_Occurred()) return -1;
    *out = (uint32_t)x;
    return 0;
}

static int set_u32_attr(PyObject *o, PyObject *name, uint32_t x) {
    PyObject *v = PyLong_FromUnsignedLong(x);
    if (!v) return -1;
    int r = PyObject_SetAttr(o, name, v);
    Py_DECREF(v);
    return r;
}

/* counters[key] += by (the port's stats dict) */
static int add_to(PyObject *dict, PyObject *key, long long by) {
    PyObject *old = PyDict_GetItemWithError(dict, key); /* borrowed */
    if (!old) {
        if (PyErr_Occurred()) return -1;
        PyObject *v = PyLong_FromLongLong(by);
        if (!v) return -1;
        int r = PyDict_SetItem(dict, key, v);
        Py_DECREF(v);
        return r;
    }
    long long x = PyLong_AsLongLong(old);
    if (x == -1 && PyErr_Occurred()) return -1;
    PyObject *v = PyLong_FromLongLong(x + by);
    if (!v) return -1;
    int r = PyDict_SetItem(dict, key, v);
    Py_DECREF(v);
    return r;
}

static int add_attr(PyObject *o, PyObject *name, long long by) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (!v) return -1;
    long long x = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    PyObject *nv = PyLong_FromLongLong(x + by);
    if (!nv) return -1;
    int r = PyObject_SetAttr(o, name, nv);
    Py_DECREF(nv);
    return r;
}

static inline uint32_t load_acquire(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_release(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* One's-complement sum of a byte run, big-endian words, odd tail padded with zero (RFC 1071). */
static uint64_t sum16(const uint8_t *p, size_t n, uint64_t acc) {
    while (n >= 2) {
        acc += ((uint32_t)p[0] << 8) | p[1];
        p += 2;
        n -= 2;
    }
    if (n) acc += (uint32_t)p[0] << 8;
    return acc;
}

static uint16_t fold(uint64_t s) {
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return (uint16_t)s;
}

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xFF; }

/* Kick the kernel: sendto(MSG_DONTWAIT) runs copy-mode TX; transient errors only mean "later". */
static int kick_tx(Lane *self) {
    if (sendto(self->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0) {
        int e = errno;
        if (e == EAGAIN || e == EBUSY || e == ENOBUFS || e == ENETDOWN || e == EINTR) return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static void wake_rx(Lane *self) {
    char b;
    (void)recv(self->fd, &b, 0, MSG_DONTWAIT); /* EAGAIN and friends: the rings tell the rest */
}

static int check_open(Lane *self) {
    if (self->closed) {
        PyErr_SetString(PyExc_ValueError, "the lane is closed");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ construction */

static int ring_from(PyObject *spec, ring_t *r) {
    /* spec: (ring object, producer addr, consumer addr, flags addr, slots addr, size) */
    PyObject *obj;
    unsigned long long prod, cons, flags, slots;
    unsigned int size;
    if (!PyArg_ParseTuple(spec, "OKKKKI", &obj, &prod, &cons, &flags, &slots, &size)) return -1;
    if (size == 0 || (size & (size - 1))) {
        PyErr_SetString(PyExc_ValueError, "ring size must be a power of two");
        return -1;
    }
    r->producer = (uint32_t *)(uintptr_t)prod;
    r->consumer = (uint32_t *)(uintptr_t)cons;
    r->flags = (uint32_t *)(uintptr_t)flags;
    r->slots = (void *)(uintptr_t)slots;
    r->size = size;
    r->mask = size - 1;
    Py_INCREF(obj);
    r->obj = obj;
    return 0;
}

static void lane_clear_refs(Lane *self) {
    Py_CLEAR(self->rx.obj);
    Py_CLEAR(self->fill.obj);
    Py_CLEAR(self->tx.obj);
    Py_CLEAR(self->comp.obj);
    Py_CLEAR(self->port);
    Py_CLEAR(self->counters);
}

static int Lane_init(Lane *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"rx", "fill", "tx", "comp", "umem", "umem_size", "frame_size", "state", "fd",
                             "port", "counters", "mac", "ip", "udp_port", "bcast", "copy", "busy",
                             "busy_every", "stash", NULL};
    PyObject *rx, *fill, *tx, *comp, *port, *counters;
    unsigned long long umem, umem_size, state;
    unsigned int frame_size, udp_port, busy_every = 16, stash = 32;
    int fd, copy_mode, busy;
    Py_buffer mac, ip, bcast;
    bcast.buf = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!O!O!KKIKiOO!y*y*Iz*pp|II", kwlist, &PyTuple_Type, &rx,
                                     &PyTuple_Type, &fill, &PyTuple_Type, &tx, &PyTuple_Type, &comp, &umem,
                                     &umem_size, &frame_size, &state, &fd, &port, &PyDict_Type, &counters,
                                     &mac, &ip, &udp_port, &bcast, &copy_mode, &busy, &busy_every, &stash))
        return -1;
    int rc = -1;
    self->closed = 1; /* a failed re-__init__ must not leave a lane that works on cleared rings */
    lane_clear_refs(self);
    if (mac.len != 6 || ip.len != 4 || (bcast.buf && bcast.len != 4)) {
        PyErr_SetString(PyExc_ValueError, "mac must be 6 bytes, ip and bcast 4");
        goto out;
    }
    if (frame_size == 0 || (frame_size & (frame_size - 1)) || stash == 0 || stash > STASH_MAX ||
        udp_port > 0xFFFF || busy_every == 0) {
        PyErr_SetString(PyExc_ValueError, "bad frame_size, stash, udp_port or busy_every");
        goto out;
    }
    if (ring_from(rx, &self->rx) || ring_from(fill, &self->fill) || ring_from(tx, &self->tx) ||
        ring_from(comp, &self->comp))
        goto out;
    self->umem = (uint8_t *)(uintptr_t)umem;
    self->umem_size = umem_size;
    self->frame_size = frame_size;
    self->chunk_mask = ~(uint64_t)(frame_size - 1);
    self->shift = (uint32_t)__builtin_ctz(frame_size);
    self->state = (uint8_t *)(uintptr_t)state;
    self->fd = fd;
    self->copy_mode = copy_mode;
    self->busy = busy;
    self->busy_every = busy_every;
    self->stash_cap = (int)stash;
    self->nstash = 0;
    self->empty_looks = 0;
    Py_INCREF(port);
    self->port = port;
    Py_INCREF(counters);
    self->counters = counters;
    memcpy(self->mac, mac.buf, 6);
    memcpy(self->ip, ip.buf, 4);
    self->has_bcast = bcast.buf != NULL;
    if (bcast.buf) memcpy(self->bcast, bcast.buf, 4);
    self->udp_port = (uint16_t)udp_port;
    self->closed = 0;
    rc = 0;
out:
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
    lane_clear_refs(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* -------------------------------------------------------------------------------------------- receive */

/* Is frame f (n bytes) one plain valid UDP datagram to us? The same rules as UdpEndpoint._accept. */
static int accept_udp(Lane *self, const uint8_t *f, uint32_t n) {
    if (n < 42) return 0;
    if (memcmp(f, self->mac, 6) || (f[6] & 1) || be16(f + 12) != 0x0800) return 0;
    const uint8_t *ip = f + 14;
    if (ip[0] != 0x45 || (be16(ip + 6) & 0x3FFF) || ip[8] == 0 || ip[9] != 17) return 0;
    if (memcmp(ip + 16, self->ip, 4) || be16(f + 36) != self->udp_port) return 0;
    uint32_t ulen = be16(f + 38), total = ulen + 20;
    if (be16(ip + 2) != total || ulen < 8 || total + 14 > n) return 0;
    const uint8_t *src = ip + 12;
    if (src[0] == 0 || src[0] == 127 || src[0] >= 224 || !memcmp(src, self->ip, 4) ||
        (self->has_bcast && !memcmp(src, self->bcast, 4)))
        return 0;
    uint16_t s = fold(sum16(ip, 20, 0));
    if (s != 0xFFFF && s != 0) return 0;
    if (be16(f + 40)) { /* zero: the sender did not compute one (allowed over IPv4) */
        uint64_t acc = sum16(ip + 12, 8, 17 + ulen);
        s = fold(sum16(f + 34, ulen, acc));
        if (s != 0xFFFF && s != 0) return 0;
    }
    return 1;
}

/* recv() -> None (ring empty), (payload, src_ip4, src_port) for a plain UDP datagram to us, the whole
 * frame as bytes for everything else (Python's slow path), or NotImplemented when the fill ring has no
 * free slot for the frame (the Python lane then takes it: it cannot happen with the port's quotas). */
static PyObject *Lane_recv(Lane *self, PyObject *unused) {
    if (check_open(self)) return NULL;
    ring_t *rx = &self->rx, *fl = &self->fill;
    uint32_t rprod, rcons;
    if (get_u32_attr(rx->obj, s_cached_prod, &rprod) || get_u32_attr(rx->obj, s_cached_cons, &rcons))
        return NULL;
    if (rprod == rcons) {
        rprod = load_acquire(rx->producer);
        if (rprod == rcons) Py_RETURN_NONE;
        if (set_u32_attr(rx->obj, s_cached_prod, rprod)) return NULL;
    }
    uint32_t fprod, fcons;
    if (get_u32_attr(fl->obj, s_cached_prod, &fprod) || get_u32_attr(fl->obj, s_cached_cons, &fcons))
        return NULL;
    if (fcons == fprod) { /* cache says full: re-read the kernel's consumer (kept `size` ahead) */
        fcons = load_acquire(fl->consumer) + fl->size;
        if (set_u32_attr(fl->obj, s_cached_cons, fcons)) return NULL;
        if (fcons == fprod) Py_RETURN_NOTIMPLEMENTED;
    }
    xdp_desc d = ((xdp_desc *)rx->slots)[rcons & rx->mask];
    PyObject *out;
    if (d.addr >= self->umem_size || d.len > self->umem_size - d.addr) {
        /* the kernel only hands back frames we lent it; refuse to read outside the UMEM regardless */
        PyErr_SetString(PyExc_RuntimeError, "RX descriptor outside the UMEM");
        return NULL;
    }
    const uint8_t *f = self->umem + d.addr;
    if (accept_udp(self, f, d.len)) {
        uint32_t ulen = be16(f + 38);
        out = Py_BuildValue("(y#y#i)", (const char *)f + 42, (Py_ssize_t)(ulen - 8), (const char *)f + 26,
                            (Py_ssize_t)4, (int)be16(f + 34));
    } else {
        out = PyBytes_FromStringAndSize((const char *)f, d.len);
    }
    if (!out) return NULL;
    /* the frame goes straight back to the kernel's fill ring: it never leaves state FILL */
    rcons++;
    store_release(rx->consumer, load_acquire(rx->consumer) + 1);
    ((uint64_t *)fl->slots)[fprod & fl->mask] = d.addr & self->chunk_mask;
    fprod++;
    store_release(fl->producer, load_acquire(fl->producer) + 1); /* as Ring.submit(1) does */
    if (set_u32_attr(rx->obj, s_cached_cons, rcons) || set_u32_attr(fl->obj, s_cached_prod, fprod) ||
        add_to(self->counters, s_rx_packets, 1) || add_to(self->counters, s_rx_bytes, d.len)) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* wake(): nothing on the ring. A busy spin makes the busy-poll syscall only every busy_every-th empty
 * look (on veth and generic XDP the ring is filled from the sender's softirq); the fill ring's
 * need-wakeup flag always gets its syscall. */
static PyObject *Lane_wake(Lane *self, PyObject *unused) {
    if (check_open(self)) return NULL;
    if (load_acquire(self->fill.flags) & XDP_RING_NEED_WAKEUP)
        wake_rx(self);
    else if (self->busy && ++self->empty_looks % self->busy_every == 0)
        wake_rx(self);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------- transmit */

/* Completed TX frames back into the stash (state TX -> APP), at most what the stash holds. */
static int reclaim(Lane *self) {
    ring_t *c = &self->comp;
    uint32_t prod, cons;
    if (get_u32_attr(c->obj, s_cached_prod, &prod) || get_u32_attr(c->obj, s_cached_cons, &cons)) return -1;
    if (prod == cons) {
        prod = load_acquire(c->producer);
        if (prod == cons) return 0;
        if (set_u32_attr(c->obj, s_cached_prod, prod)) return -1;
    }
    uint32_t n = prod - cons, room = (uint32_t)(self->stash_cap - self->nstash);
    if (n > room) n = room; /* completions of the batch path are the port's to reap */
    if (n == 0) return 0;
    for (uint32_t k = 0; k < n; k++) {
        uint64_t a = ((uint64_t *)c->slots)[(cons + k) & c->mask];
        if (a >= self->umem_size) { /* as push_free and mark check theirs: never write past the states */
            PyErr_Format(PyExc_IndexError, "completed address 0x%llx is outside the UMEM", (unsigned long long)a);
            return -1;
        }
        self->state[a >> self->shift] = ST_APP;
        self->stash[self->nstash++] = a;
    }
    cons += n;
    store_release(c->consumer, load_acquire(c->consumer) + n);
    if (set_u32_attr(c->obj, s_cached_cons, cons) || add_attr(self->port, s_in_tx, -(long long)n) ||
        add_to(self->counters, s_tx_completed, n))
        return -1;
    return (int)n;
}

/* Put frame bytes [head][payload] on the TX ring from a stash frame; patch UDP/IP fields when udp. */
static PyObject *transmit(Lane *self, const uint8_t *head, Py_ssize_t hlen, const uint8_t *payload,
                          Py_ssize_t plen, int udp, int ident) {
    if (check_open(self)) return NULL;
    Py_ssize_t n = hlen + plen;
    if (n <= 0 || (uint64_t)n > self->frame_size) {
        PyErr_Format(PyExc_ValueError, "frame of %zd bytes does not fit a %u-byte UMEM frame", n,
                     self->frame_size);
        return NULL;
    }
    if (self->nstash == 0 && reclaim(self) < 0) return NULL;
    if (self->nstash == 0) return PyLong_FromLong(-1); /* Python refills the stash from the port */
    ring_t *tx = &self->tx;
    uint32_t prod, cons;
    if (get_u32_attr(tx->obj, s_cached_prod, &prod) || get_u32_attr(tx->obj, s_cached_cons, &cons))
        return NULL;
    if (cons == prod) {
        cons = load_acquire(tx->consumer) + tx->size;
        if (cons == prod) {
            if (kick_tx(self)) return NULL; /* let the kernel drain the ring, then look again once */
            cons = load_acquire(tx->consumer) + tx->size;
        }
        if (set_u32_attr(tx->obj, s_cached_cons, cons)) return NULL;
        if (cons == prod) return PyLong_FromLong(0);
    }
    uint64_t addr = self->stash[--self->nstash];
    if (addr >= self->umem_size || (uint64_t)n > self->frame_size - (addr & (self->frame_size - 1))) {
        self->stash[self->nstash++] = addr;
        PyErr_SetString(PyExc_RuntimeError, "stash frame outside the UMEM");
        return NULL;
    }
    uint8_t *f = self->umem + addr;
    memcpy(f, head, hlen);
    memcpy(f + hlen, payload, plen);
    if (udp) { /* lengths, ident and both checksums of the 42-byte template + payload */
        uint32_t ulen = (uint32_t)plen + 8;
        put16(f + 16, (uint16_t)(ulen + 20));
        put16(f + 18, (uint16_t)ident);
        put16(f + 24, 0);
        put16(f + 24, (uint16_t)~fold(sum16(f + 14, 20, 0)));
        put16(f + 38, (uint16_t)ulen);
        put16(f + 40, 0);
        uint16_t u = (uint16_t)~fold(sum16(f + 34, ulen, sum16(f + 26, 8, 17 + ulen)));
        put16(f + 40, u ? u : 0xFFFF); /* zero means "no checksum" in UDP over IPv4 */
    }
    xdp_desc *d = &((xdp_desc *)tx->slots)[prod & tx->mask];
    d->addr = addr;
    d->len = (uint32_t)n;
    d->options = 0;
    self->state[addr >> self->shift] = ST_TX;
    prod++;
    store_release(tx->producer, load_acquire(tx->producer) + 1); /* as Ring.submit(1) does */
    if (set_u32_attr(tx->obj, s_cached_prod, prod) || add_attr(self->port, s_in_tx, 1) ||
        add_to(self->counters, s_tx_packets, 1) || add_to(self->counters, s_tx_bytes, n))
        return NULL;
    if (self->copy_mode || self->busy || (load_acquire(tx->flags) & XDP_RING_NEED_WAKEUP)) {
        if (add_to(self->counters, s_tx_kicks, 1) || kick_tx(self)) return NULL;
    }
    return PyLong_FromLong(1);
}

/* send_udp(template42, payload, ident) -> 1 sent, 0 no TX slot, -1 stash empty (give() frames first) */
static PyObject *Lane_send_udp(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_udp(template, payload, ident)");
        return NULL;
    }
    Py_buffer t, p;
    if (PyObject_GetBuffer(args[0], &t, PyBUF_SIMPLE)) return NULL;
    if (PyObject_GetBuffer(args[1], &p, PyBUF_SIMPLE)) {
        PyBuffer_Release(&t);
        return NULL;
    }
    long ident = PyLong_AsLong(args[2]);
    PyObject *r = NULL;
    if (ident == -1 && PyErr_Occurred()) goto out;
    if (t.len != 42) {
        PyErr_SetString(PyExc_ValueError, "the UDP template must be the 42 header bytes");
        goto out;
    }
    if (p.len > 0xFFFF - 28) {
        PyErr_SetString(PyExc_ValueError, "UDP payload above 65507 bytes");
        goto out;
    }
    r = transmit(self, t.buf, t.len, p.buf, p.len, 1, (int)(ident & 0xFFFF));
out:
    PyBuffer_Release(&t);
    PyBuffer_Release(&p);
    return r;
}

/* send_frame(frame) -> like send_udp, for a whole frame built elsewhere (ARP, ICMP answers). */
static PyObject *Lane_send_frame(Lane *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE)) return NULL;
    PyObject *r = transmit(self, b.buf, b.len, NULL, 0, 0, 0);
    PyBuffer_Release(&b);
    return r;
}

/* give(addrs): frames in state APP from the port's alloc() for the stash; returns how many it took. */
static PyObject *Lane_give(Lane *self, PyObject *arg) {
    if (check_open(self)) return NULL;
    PyObject *seq = PySequence_Fast(arg, "give() takes a sequence of frame addresses");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), k = 0;
    for (; k < n && self->nstash < self->stash_cap; k++) {
        unsigned long long a = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, k));
        if (a == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        if (a >= self->umem_size || self->state[a >> self->shift] != ST_APP) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "frame 0x%llx is not an application-held frame of this UMEM", a);
            return NULL;
        }
        self->stash[self->nstash++] = a;
    }
    Py_DECREF(seq);
    return PyLong_FromSsize_t(k);
}

/* take_stash() -> list of the stash's frame addresses (state APP), emptying it. */
static PyObject *Lane_take_stash(Lane *self, PyObject *unused) {
    PyObject *out = PyList_New(self->nstash);
    if (!out) return NULL;
    for (int i = 0; i < self->nstash; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(self->stash[i]);
        if (!v) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    self->nstash = 0;
    return out;
}

static PyObject *Lane_reclaim(Lane *self, PyObject *unused) {
    if (check_open(self)) return NULL;
    int n = reclaim(self);
    return n < 0 ? NULL : PyLong_FromLong(n);
}

/* close(): drop every pointer into the port's memory (before the port unmaps it). */
static PyObject *Lane_close(Lane *self, PyObject *unused) {
    self->closed = 1;
    self->umem = NULL;
    self->state = NULL;
    lane_clear_refs(self);
    Py_RETURN_NONE;
}

static PyObject *Lane_get_stashed(Lane *self, void *c) { return PyLong_FromLong(self->nstash); }

static PyMethodDef Lane_methods[] = {
    {"recv", (PyCFunction)Lane_recv, METH_NOARGS, "one frame off the RX ring (see module source)"},
    {"wake", (PyCFunction)Lane_wake, METH_NOARGS, "nothing on the ring: let the kernel make progress"},
    {"send_udp", (PyCFunction)(void (*)(void))Lane_send_udp, METH_FASTCALL, "template, payload, ident"},
    {"send_frame", (PyCFunction)Lane_send_frame, METH_O, "send one whole frame"},
    {"give", (PyCFunction)Lane_give, METH_O, "frame addresses for the stash"},
    {"take_stash", (PyCFunction)Lane_take_stash, METH_NOARGS, "empty the stash, returning its frames"},
    {"reclaim", (PyCFunction)Lane_reclaim, METH_NOARGS, "completions into the stash"},
    {"close", (PyCFunction)Lane_close, METH_NOARGS, "forget the port's memory"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Lane_getset[] = {
    {"stashed", (getter)Lane_get_stashed, NULL, "frames held in the stash (state APP)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kbypass._fastlane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One AF_XDP socket's rings, one UDP message at a time (see kbypass.endpoint._Lane).",
    .tp_new = Lane_new,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
    .tp_getset = Lane_getset,
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "kbypass._fastlane",
                                    "UdpEndpoint's per-message ring path in C.", -1, NULL};

PyMODINIT_FUNC PyInit__fastlane(void) {
    if (PyType_Ready(&LaneType) < 0) return NULL;
#define INTERN(var, s) if (!(var = PyUnicode_InternFromString(s))) return NULL
    INTERN(s_cached_prod, "cached_prod");
    INTERN(s_cached_cons, "cached_cons");
    INTERN(s_in_tx, "_in_tx");
    INTERN(s_in_fill, "_in_fill");
    INTERN(s_rx_packets, "rx_packets");
    INTERN(s_rx_bytes, "rx_bytes");
    INTERN(s_tx_packets, "tx_packets");
    INTERN(s_tx_bytes, "tx_bytes");
    INTERN(s_tx_kicks, "tx_kicks");
    INTERN(s_tx_completed, "tx_completed");
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
