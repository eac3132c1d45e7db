/* kbypass._fastbatch: the per-batch bookkeeping of the Port API, a CPython binding over the C core
 * (csrc/core: kb_umem.h for frame states, kb_batch.h for header swaps and stamps). This file parses
 * arguments, opens buffers and raises; the core does the work.
 *
 * Every Mpps path (sink, reflect, the AF_XDP generator) runs receive -> header rewrite -> transmit per
 * batch. In numpy each of these is a dozen small calls (a reduction alone costs ~3 us here), ~150 us per
 * batch whatever its size: more than the kernel's copy-mode work for batches of a few hundred frames.
 * The numpy code in kbypass/xsk/umem.py and kbypass/port/batch.py stays the reference and the fallback,
 * and produces the error messages: when a check here fails, nothing has changed and the caller runs the
 * numpy path, which raises the precise error.
 *
 * Descriptors are kbypass.port.batch.DESC records (u64 addr, u32 len, u32 options), any stride.
 */
#include "pydescs.h"

#include "core/kb_batch.h"
#include "core/kb_pool_lock.h"
#include "core/kb_port.h"
#include "core/kb_seq.h"
#include "core/kb_sink.h"
#include "core/kb_umem.h"

static int get_bytes(PyObject *obj, Py_buffer *b, int writable) {
    return PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0));
}

/* The UMEM's frame-state array (writable u8) and a descriptor array, both or neither. */
static int get_state_and_descs(PyObject *state_o, PyObject *descs_o, Py_buffer *st, Py_buffer *dv,
                               struct kb_descs *d) {
    if (get_bytes(state_o, st, 1)) return -1;
    if (get_descs(descs_o, dv, d, 0)) {
        PyBuffer_Release(st);
        return -1;
    }
    return 0;
}

/* The packet memory (writable) and descriptors of a header rewrite, checked by kb_batch_check: *bad is
 * the index of the first frame shorter than `need` bytes (-1: none); a frame whose first `need` bytes lie
 * outside the memory is an IndexError. -1 with an exception set, else 0 (release both after). */
static int open_frames(PyObject *mem_o, PyObject *descs_o, uint64_t need, Py_buffer *mem, Py_buffer *dv,
                       struct kb_descs *d, Py_ssize_t *bad) {
    if (get_bytes(mem_o, mem, 1)) return -1;
    if (get_descs(descs_o, dv, d, 0)) {
        PyBuffer_Release(mem);
        return -1;
    }
    long long r = kb_batch_check((uint64_t)mem->len, d, need);
    if (r <= -2) {
        Py_ssize_t i = (Py_ssize_t)(-2 - r);
        char hex[24]; /* PyErr_Format has no %llx before Python 3.12: it printed the format itself */
        snprintf(hex, sizeof hex, "0x%llx", (unsigned long long)kb_descs_addr(d, (size_t)i));
        PyErr_Format(PyExc_IndexError, "frame %zd at %s is outside the packet memory", i, hex);
        PyBuffer_Release(mem);
        PyBuffer_Release(dv);
        return -1;
    }
    *bad = (Py_ssize_t)r;
    return 0;
}

/* swap(mem, descs, offset, width, need) -> -1, or the index of the first frame shorter than `need`
 * (then nothing was swapped): kb_batch_swap. */
static PyObject *swap(PyObject *self, PyObject *args) {
    PyObject *mem_o, *descs_o;
    Py_ssize_t offset, width, need;
    if (!PyArg_ParseTuple(args, "OOnnn", &mem_o, &descs_o, &offset, &width, &need)) return NULL;
    if (!kb_batch_swap_ok(offset, width, need)) {
        PyErr_SetString(PyExc_ValueError, "swap: bad offset, width or need");
        return NULL;
    }
    Py_buffer mem, dv;
    struct kb_descs d;
    Py_ssize_t bad;
    if (open_frames(mem_o, descs_o, (uint64_t)need, &mem, &dv, &d, &bad)) return NULL;
    if (bad < 0) kb_batch_swap(mem.buf, &d, (size_t)offset, (size_t)width);
    PyBuffer_Release(&mem);
    PyBuffer_Release(&dv);
    return PyLong_FromSsize_t(bad);
}

/* claim(state, descs, shift, umem_size, frame_size, expected, to, tx) -> total length, or -1 when nothing
 * changed: kb_umem_claim. */
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
    Py_buffer st, dv;
    struct kb_descs d;
    if (get_state_and_descs(state_o, descs_o, &st, &dv, &d)) return NULL;
    struct kb_umem_states u = {st.buf, (uint64_t)st.len, shift};
    long long total = kb_umem_claim(&u, &d, umem_size, frame_size, (uint8_t)expected, (uint8_t)to, tx);
    PyBuffer_Release(&st);
    PyBuffer_Release(&dv);
    return PyLong_FromLongLong(total);
}

/* push_free(state, free, top, addrs, shift) -> new top: kb_umem_push_free (free: an intp array). */
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
    if (shift > 31 || ad.len % 8 || top < 0) {
        PyErr_SetString(PyExc_ValueError, "push_free: bad shift, addresses or free-stack size");
        goto out;
    }
    struct kb_umem_states u = {st.buf, (uint64_t)st.len, shift};
    uint64_t bad = 0;
    long long t = kb_umem_push_free(&u, fr.buf, (size_t)fr.len / sizeof(ptrdiff_t), (size_t)top, ad.buf,
                                    (size_t)ad.len / 8, &bad);
    if (t == -1)
        PyErr_SetString(PyExc_ValueError, "push_free: bad shift, addresses or free-stack size");
    else if (t < 0) {
        char hex[24]; /* no %llx in PyErr_Format before 3.12 */
        snprintf(hex, sizeof hex, "0x%llx", (unsigned long long)bad);
        PyErr_Format(PyExc_IndexError, "completed address %s is outside the UMEM", hex);
    }
    else
        r = PyLong_FromLongLong(t);
out:
    PyBuffer_Release(&st);
    PyBuffer_Release(&fr);
    PyBuffer_Release(&ad);
    return r;
}

/* mark(state, descs, shift, to) -> total length: kb_umem_mark. */
static PyObject *mark(PyObject *self, PyObject *args) {
    PyObject *state_o, *descs_o;
    unsigned int shift, to;
    if (!PyArg_ParseTuple(args, "OOII", &state_o, &descs_o, &shift, &to)) return NULL;
    if (shift > 31 || to > 255) {
        PyErr_SetString(PyExc_ValueError, "mark: bad shift or state");
        return NULL;
    }
    Py_buffer st, dv;
    struct kb_descs d;
    if (get_state_and_descs(state_o, descs_o, &st, &dv, &d)) return NULL;
    struct kb_umem_states u = {st.buf, (uint64_t)st.len, shift};
    uint64_t total = 0;
    long long r = kb_umem_mark(&u, &d, (uint8_t)to, &total);
    PyBuffer_Release(&st);
    PyBuffer_Release(&dv);
    if (r < 0) return PyErr_Format(PyExc_IndexError, "descriptor %lld points outside the UMEM", -1 - r);
    return PyLong_FromUnsignedLongLong(total);
}

/* stamp(mem, descs, offset, first_seq, now_ns) -> -1, or the index of the first frame shorter than
 * offset + 16 (then nothing was written): kb_batch_stamp. numpy needs a 16-byte gather-scatter for this,
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
    Py_buffer mem, dv;
    struct kb_descs d;
    Py_ssize_t bad;
    if (open_frames(mem_o, descs_o, (uint64_t)offset + 16, &mem, &dv, &d, &bad)) return NULL;
    if (bad < 0) kb_batch_stamp(mem.buf, &d, (size_t)offset, first, now);
    PyBuffer_Release(&mem);
    PyBuffer_Release(&dv);
    return PyLong_FromSsize_t(bad);
}

/* Views of n writable, contiguous buffers, each at least min[i] bytes: all or none (-1, exception set). */
static int get_all(PyObject **objs, Py_buffer *views, const Py_ssize_t *min, const char *const *names, int n) {
    for (int i = 0; i < n; i++) {
        if (get_bytes(objs[i], &views[i], 1) == 0 && views[i].len >= min[i]) continue;
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "%s: %zd bytes, at least %zd needed", names[i], views[i].len, min[i]);
            PyBuffer_Release(&views[i]);
        }
        while (i--) PyBuffer_Release(&views[i]);
        return -1;
    }
    return 0;
}

static void release_all(Py_buffer *views, int n) {
    for (int i = 0; i < n; i++) PyBuffer_Release(&views[i]);
}

/* The sequence state (SeqChecker.state: struct kb_seq's eight int64s) and its window of flags. */
static int seq_views(PyObject *state_o, PyObject *seen_o, Py_buffer *v) {
    PyObject *objs[] = {state_o, seen_o};
    static const char *const names[] = {"seq state", "seq window"};
    const Py_ssize_t min[] = {(Py_ssize_t)sizeof(struct kb_seq), 1};
    return get_all(objs, v, min, names, 2);
}

/* A buffer of native int64s: the format, not only the item size (a float64 array has 8-byte items too). */
static int is_int64(const Py_buffer *b) {
    const char *f = b->format ? b->format : "B";
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (*f == '@' || *f == '=' || *f == '<') f++;
#else
    if (*f == '@' || *f == '=' || *f == '>' || *f == '!') f++;
#endif
    return b->itemsize == 8 && (f[0] == 'q' || f[0] == 'l') && f[1] == 0;
}

/* seq_update(state, seen, seqs) -> None: kb_seq_update on an int64 array of sequence numbers. */
static PyObject *seq_update(PyObject *self, PyObject *args) {
    PyObject *state_o, *seen_o, *seqs_o;
    if (!PyArg_ParseTuple(args, "OOO", &state_o, &seen_o, &seqs_o)) return NULL;
    Py_buffer v[2], sq;
    if (seq_views(state_o, seen_o, v)) return NULL;
    if (PyObject_GetBuffer(seqs_o, &sq, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) ||
        (!is_int64(&sq) && (PyBuffer_Release(&sq), 1))) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "seq_update: seqs must be an int64 array");
        release_all(v, 2);
        return NULL;
    }
    kb_seq_update(v[0].buf, v[1].buf, (uint64_t)v[1].len, sq.buf, (size_t)sq.len / 8);
    PyBuffer_Release(&sq);
    release_all(v, 2);
    Py_RETURN_NONE;
}

/* drain(rx, fill, fd, umem, frame_size, stats, budget, stamp_off, state, seen, seqs, lat, wait_ms[, lock])
 *   -> (frames, bytes, latencies, first_ns, last_ns): kb_sink_run (wait_ms 0: one kb_sink_drain, no waiting);
 * RuntimeError for an RX descriptor outside its UMEM frame when no frame was taken before it (kb_sink.h);
 * first_ns, last_ns: CLOCK_MONOTONIC of the first and last frames taken (0 when none). rx, fill: the rings' struct kb_ring (ring.py KbRing);
 * stats: the port's counters; state, seen: the sequence check's (None when stamp_off is 0); seqs, lat:
 * int64 scratch and output arrays with room for budget numbers; lock: a shared queue's pool lock's memory
 * (kbypass.xsk.pool_lock's mapping), None for a queue of one's own; TimeoutError when it stayed busy for one
 * wait (KB_POOL_SLICE_MS: the caller counts the waits), OSError when pthread refused it. */
static PyObject *drain(PyObject *self, PyObject *args) {
    PyObject *o[10];
    int fd;
    unsigned int frame_size, budget;
    Py_ssize_t stamp_off;
    int wait_ms;
    PyObject *lock_obj = Py_None;
    if (!PyArg_ParseTuple(args, "OOiOIOInOOOOi|O", &o[0], &o[1], &fd, &o[2], &frame_size, &o[3], &budget,
                          &stamp_off, &o[4], &o[5], &o[6], &o[7], &wait_ms, &lock_obj))
        return NULL;
    if (!frame_size || (frame_size & (frame_size - 1)) || stamp_off < 0 || !budget || wait_ms < 0) {
        PyErr_SetString(PyExc_ValueError, "drain: bad frame size, budget or stamp offset");
        return NULL;
    }
    int nv = stamp_off ? 8 : 4; /* without stamps: no sequence state, no scratch */
    static const char *const names[] = {"RX ring", "fill ring", "UMEM", "port counters",
                                        "seq state", "seq window", "seq scratch", "latencies"};
    const Py_ssize_t min[] = {(Py_ssize_t)sizeof(struct kb_ring), (Py_ssize_t)sizeof(struct kb_ring), 1,
                              KB_PORT_NSTATS * 8, (Py_ssize_t)sizeof(struct kb_seq), 1, (Py_ssize_t)budget * 8,
                              (Py_ssize_t)budget * 8};
    Py_buffer v[8], lk = {0};
    /* the lock's memory as a view: pinned for the call, so closing its PoolLock meanwhile cannot unmap it */
    if (lock_obj != Py_None) {
        if (PyObject_GetBuffer(lock_obj, &lk, PyBUF_WRITABLE) < 0) return NULL;
        if (lk.len < (Py_ssize_t)sizeof(pthread_mutex_t)) {
            PyBuffer_Release(&lk);
            PyErr_SetString(PyExc_ValueError, "drain: the lock's memory is too small for a mutex");
            return NULL;
        }
    }
    if (get_all(o, v, min, names, nv)) {
        if (lk.obj) PyBuffer_Release(&lk);
        return NULL;
    }
    struct kb_sink k = {.rx = v[0].buf, .fill = v[1].buf, .umem = v[2].buf, .umem_size = (uint64_t)v[2].len,
                        .frame_size = frame_size, .stats = v[3].buf, .fd = fd, .stamp_off = (size_t)stamp_off,
                        .lock = lk.obj ? lk.buf : NULL};
    if (stamp_off) {
        k.seq = v[4].buf;
        k.seen = v[5].buf;
        k.window = (uint64_t)v[5].len;
        k.seqs = v[6].buf;
        k.lat = v[7].buf;
    }
    PyObject *r = NULL;
    if (!kb_ring_valid(k.rx) || !kb_ring_valid(k.fill)) {
        PyErr_SetString(PyExc_ValueError, "drain: the rings are closed");
    } else {
        uint64_t bytes;
        size_t nlat;
        long long n;
        /* No Python object is touched without the GIL. The views pin the KbRing structs, the UMEM, the
         * counters and the scratch, but not the ring mmaps the KbRings point into, nor the socket's fd:
         * closing the port from another thread during this call (up to wait_ms) would unmap the rings
         * under it, which is why AfXdpPort.consume's contract forbids it. */
        Py_BEGIN_ALLOW_THREADS
        n = wait_ms ? kb_sink_run(&k, budget, wait_ms, &bytes, &nlat) : kb_sink_drain(&k, budget, &bytes, &nlat);
        Py_END_ALLOW_THREADS
        if (n == KB_SINK_E_RX_DESC) { /* a kernel (or ring) fault, not the caller's: the UDP lane's verdict */
            char msg[160]; /* PyErr_Format has no %llx */
            snprintf(msg, sizeof msg, "RX descriptor outside its UMEM frame (addr %#llx, len %u, UMEM %llu bytes): left "
                     "on the RX ring", (unsigned long long)k.bad_addr, (unsigned)k.bad_len,
                     (unsigned long long)k.umem_size);
            PyErr_SetString(PyExc_RuntimeError, msg);
        } else if (n == KB_SINK_E_LOCK && k.lock_err == ETIMEDOUT) { /* busy a whole slice: Python's turn */
            PyErr_SetString(PyExc_TimeoutError, "the shared queue's lock is busy");
        } else if (n == KB_SINK_E_LOCK) {
            PyErr_Format(PyExc_OSError, "taking the shared queue's lock failed: %s", strerror(k.lock_err));
        } else {
            r = Py_BuildValue("LKnLL", n, (unsigned long long)bytes, (Py_ssize_t)nlat, (long long)k.first_ns,
                              (long long)k.last_ns);
        }
    }
    release_all(v, nv);
    if (lk.obj) PyBuffer_Release(&lk);
    return r;
}

/* split_chains(ring, heads, tails, ntails, kept) -> packets, or -1 when the last descriptor continues
 * (nothing meaningful written): kb_batch_split_chains. heads, tails and kept: writable DESC arrays, ntails a
 * u32 array, each with room for len(ring). */
static PyObject *split_chains(PyObject *self, PyObject *args) {
    PyObject *ring_o, *heads_o, *tails_o, *ntails_o, *kept_o;
    if (!PyArg_ParseTuple(args, "OOOOO", &ring_o, &heads_o, &tails_o, &ntails_o, &kept_o)) return NULL;
    Py_buffer rv, hv, tv, nv, kv;
    struct kb_descs ring, heads, tails, kept;
    PyObject *r = NULL;
    if (get_descs(ring_o, &rv, &ring, 0)) return NULL;
    if (get_descs(heads_o, &hv, &heads, 1)) goto out_r;
    if (get_descs(tails_o, &tv, &tails, 1)) goto out_h;
    if (get_descs(kept_o, &kv, &kept, 1)) goto out_t;
    if (PyObject_GetBuffer(ntails_o, &nv, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT)) goto out_k;
    if (nv.itemsize != 4 || !nv.format || (strcmp(nv.format, "I") && strcmp(nv.format, "<I") && strcmp(nv.format, "=I"))) {
        PyErr_SetString(PyExc_TypeError, "split_chains: ntails must be a uint32 array");
    } else if (heads.n < ring.n || tails.n < ring.n || kept.n < ring.n || (size_t)(nv.len / 4) < ring.n) {
        PyErr_SetString(PyExc_ValueError, "split_chains: every output needs room for len(ring) records");
    } else {
        r = PyLong_FromLongLong(kb_batch_split_chains(&ring, &heads, &tails, nv.buf, &kept));
    }
    PyBuffer_Release(&nv);
out_k:
    PyBuffer_Release(&kv);
out_t:
    PyBuffer_Release(&tv);
out_h:
    PyBuffer_Release(&hv);
out_r:
    PyBuffer_Release(&rv);
    return r;
}

/* chain_ends(descs, ends, max_frames) -> (packets, stopped): kb_batch_chain_ends (ends: an int64 array with
 * room for len(descs)). */
static PyObject *chain_ends(PyObject *self, PyObject *args) {
    PyObject *descs_o, *ends_o;
    unsigned long long max_frames;
    if (!PyArg_ParseTuple(args, "OOK", &descs_o, &ends_o, &max_frames)) return NULL;
    Py_buffer dv, ev;
    struct kb_descs d;
    if (get_descs(descs_o, &dv, &d, 0)) return NULL;
    if (PyObject_GetBuffer(ends_o, &ev, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT)) {
        PyBuffer_Release(&dv);
        return NULL;
    }
    PyObject *r = NULL;
    if (ev.itemsize != 8 || !ev.format || !strchr("lq", ev.format[strlen(ev.format) - 1])) {
        PyErr_SetString(PyExc_TypeError, "chain_ends: ends must be an int64 array");
    } else if ((size_t)(ev.len / 8) < d.n) {
        PyErr_SetString(PyExc_ValueError, "chain_ends: ends needs room for len(descs)");
    } else {
        int stopped;
        size_t k = kb_batch_chain_ends(&d, ev.buf, max_frames, &stopped);
        r = Py_BuildValue("ni", (Py_ssize_t)k, stopped);
    }
    PyBuffer_Release(&ev);
    PyBuffer_Release(&dv);
    return r;
}

static PyMethodDef methods[] = {
    {"swap", swap, METH_VARARGS, "swap(mem, descs, offset, width, need) -> -1 or first short frame"},
    {"claim", claim, METH_VARARGS, "claim(state, descs, shift, umem_size, frame_size, expected, to, tx)"},
    {"mark", mark, METH_VARARGS, "mark(state, descs, shift, to) -> total length"},
    {"push_free", push_free, METH_VARARGS, "push_free(state, free, top, addrs, shift) -> new top"},
    {"stamp", stamp, METH_VARARGS, "stamp(mem, descs, offset, first_seq, now_ns) -> -1 or first short frame"},
    {"seq_update", seq_update, METH_VARARGS, "seq_update(state, seen, seqs) -> None"},
    {"chain_ends", chain_ends, METH_VARARGS, "chain_ends(descs, ends, max_frames) -> (packets, stopped)"},
    {"split_chains", split_chains, METH_VARARGS,
     "split_chains(ring, heads, tails, ntails, kept) -> packets, or -1 (the last descriptor continues)"},
    {"drain", drain, METH_VARARGS,
     "drain(rx, fill, fd, umem, frame_size, stats, budget, stamp_off, state, seen, seqs, lat, wait_ms[, lock]) -> "
     "(n, bytes, nlat, first_ns, last_ns)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "kbypass._fastbatch",
                                    "The Port API's per-batch bookkeeping in C.", -1, methods};

PyMODINIT_FUNC PyInit__fastbatch(void) {
    PyObject *m = PyModule_Create(&moddef);
    /* the UMEM frame states of kb_umem.h, the one definition (kbypass.xsk.umem is held to it by a test) */
    if (m && (PyModule_AddIntConstant(m, "FRAME_FREE", KB_FRAME_FREE) ||
              PyModule_AddIntConstant(m, "FRAME_FILL", KB_FRAME_FILL) ||
              PyModule_AddIntConstant(m, "FRAME_APP", KB_FRAME_APP) ||
              PyModule_AddIntConstant(m, "FRAME_TX", KB_FRAME_TX))) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
