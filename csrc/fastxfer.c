/* kbypass._fastxfer: the bulk-transfer path of the reliable transport (kbypass.proto.transport) in C.
 *
 * A transfer moves ~100k datagrams a second per side, and in Python each one costs ~10 us on each side:
 * the frame check, the CRC, the header decode, the in-order delivery on the receiver; the header encode,
 * the CRC and the frame build on the sender. This module does exactly that per-datagram work; everything
 * with a decision in it (handshake, SACK, loss detection, timers, congestion control, any datagram that is
 * not the next in-order data segment) stays in the sans-IO Python, which is also the reference:
 *
 *   rx_run       the longest run of frames, from `start`, that are each the next data segment in line of
 *                one connection (the next in-order bytes, or the next bytes of the out-of-order run above
 *                a hole) and tell its sender side nothing new (Connection.rx_run_params gives the
 *                conditions, Connection.receive_run applies the run's effects). Their payloads come back
 *                joined (with the message boundaries in message mode), or one per segment for the
 *                out-of-order buffer. The first frame that is anything else ends the run and goes to the
 *                Python path, unread here.
 *   encode       wire.encode_fields for a datagram without SACK blocks: header, payload, CRC32 trailer.
 *   write_frames UdpEncap.frame / EthEncap.frame for a list of datagrams, written straight into the
 *                frames of a batch (descriptor lengths set too).
 *
 * Wire layouts: kbypass/proto/transport/wire.py (datagram) and kbypass/xfer/encap.py (frames).
 * Descriptors are kbypass.port.batch.DESC records (u64 addr, u32 len, u32 options), any stride.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "descs.h"
#include <isa-l/crc.h>

#define HEADER_SIZE 42
#define CRC_SIZE 4
#define OVERHEAD (HEADER_SIZE + CRC_SIZE)
#define VERSION 1
#define FLAG_ACK 0x02
#define ETH_HLEN 14
#define UDP_HLEN 42

enum { KIND_UDP = 0, KIND_ETH = 1 };

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) << 32 | rd32(p + 4); }
static inline void wr16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void wr64(uint8_t *p, uint64_t v) { wr32(p, (uint32_t)(v >> 32)); wr32(p + 4, (uint32_t)v); }

static inline uint32_t crc32_of(const uint8_t *p, size_t n) {
    /* The CRC32 of zlib.crc32 (reflected IEEE 802.3, gzip's), which the Python path uses. ISA-L's
     * version folds with PCLMULQDQ (picked at run time, plain C on CPUs without it): 122 ns for a
     * 1448-byte datagram here against zlib 1.2.13's 504, on both the sender and the receiver. */
    return crc32_gzip_refl(0, p, n);
}

/* The transport datagram inside frame f of length k, from the peer to us, or NULL. The checks are
 * UdpEncap.peer_datagrams' / EthEncap.peer_datagrams' one-comparison test; a frame that fails them goes
 * to the Python path, which says why it is dropped (or takes it by its slower test). */
static const uint8_t *datagram_of(const uint8_t *f, uint32_t k, int kind, const uint8_t *key, Py_ssize_t keylen,
                                  uint32_t *dlen) {
    if (kind == KIND_UDP) {
        if (k < UDP_HLEN || keylen != 12) return NULL;
        uint16_t total = rd16(f + 16), ulen = rd16(f + 38);
        if (rd16(f + 12) != 0x0800 || f[14] != 0x45 || f[23] != 17 || (rd16(f + 20) & 0x3FFF) ||
            memcmp(f + 26, key, 12) != 0 || (uint32_t)total + ETH_HLEN > k || ulen != total - 20 || ulen < 8)
            return NULL;
        *dlen = (uint32_t)total + ETH_HLEN - UDP_HLEN;
        return f + UDP_HLEN;
    }
    if (k < ETH_HLEN + OVERHEAD || keylen != ETH_HLEN || memcmp(f, key, ETH_HLEN) != 0) return NULL;
    *dlen = k - ETH_HLEN;
    return f + ETH_HLEN;
}

/* rx_run(mem, descs, start, kind, key, local_id, peer_id, seq, ack, right, room_end, room_bytes, mode)
 *     -> (stop, data, tsval, ends)
 *
 * Frames start..stop-1 are each: a frame from the peer (kind 0 udp, 1 eth; key as in encap), carrying a
 * datagram with a valid CRC, version 1, flags exactly ACK (in message mode also ACK|MSG_END), no SACK
 * blocks, our connection ids, a non-empty payload starting at the running seq (from `seq`: rcv_nxt for
 * in-order data, the end of the out-of-order run being extended otherwise) and ending by `room_end`,
 * ack == `ack` (nothing newly acknowledged) and ack + window <= `right` (no wider window); their
 * payloads add up to at most `room_bytes`. `mode`: RUN_IN_ORDER (data: the payloads joined in one bytes
 * object), RUN_OUT_OF_ORDER (data: a list of one bytes object per datagram) or RUN_MESSAGES (joined, and
 * `ends` lists the offsets in data where a datagram with MSG_END ended: message boundaries). `tsval` is
 * the last one's timestamp (0 when stop == start). Nothing is changed in mem or descs. */
enum { RUN_IN_ORDER = 0, RUN_OUT_OF_ORDER = 1, RUN_MESSAGES = 2 };
struct piece { uint64_t off; uint32_t len; uint8_t msg_end; }; /* where pass 1 found a payload */
#define FLAG_MSG_END 0x20

static PyObject *rx_run(PyObject *self, PyObject *args) {
    PyObject *mem_o, *descs_o;
    Py_ssize_t start;
    int kind, mode;
    Py_buffer key;
    unsigned long local_id, peer_id;
    unsigned long long seq0, ack, right, room_end, room_bytes;
    if (!PyArg_ParseTuple(args, "OOniy*kkKKKKKi", &mem_o, &descs_o, &start, &kind, &key, &local_id, &peer_id,
                          &seq0, &ack, &right, &room_end, &room_bytes, &mode))
        return NULL;
    Py_buffer mem;
    descs_t d;
    PyObject *result = NULL;
    struct piece *pieces = NULL;
    if (PyObject_GetBuffer(mem_o, &mem, PyBUF_C_CONTIGUOUS)) {
        PyBuffer_Release(&key);
        return NULL;
    }
    if (get_descs(descs_o, &d, 0)) goto out_mem;
    if (start < 0 || start > d.n || (kind != KIND_UDP && kind != KIND_ETH) || mode < RUN_IN_ORDER ||
        mode > RUN_MESSAGES) {
        PyErr_SetString(PyExc_ValueError, "rx_run: start beyond the batch, or an unknown kind or mode");
        goto out;
    }
    int split = mode == RUN_OUT_OF_ORDER;
    unsigned allowed_end = mode == RUN_MESSAGES ? FLAG_MSG_END : 0;
    const uint8_t *base = mem.buf;
    uint64_t memlen = (uint64_t)mem.len;
    uint64_t seq = seq0, total = 0;
    uint32_t tsval = 0;
    Py_ssize_t i;
    /* Pass 1 records where each payload is; pass 2 copies from the record and never looks at the frames or
     * descriptors again: pass 2 allocates Python objects, a garbage collection may run a finalizer, and that
     * Python code may change the descriptors or the frames (it did, in a test: a NULL dereference and a
     * heap overflow). What a finalizer changes in the payload bytes meanwhile is its own business; every
     * copy stays inside the memory and the output that pass 1 sized. */
    if (d.n > start && !(pieces = PyMem_Malloc((size_t)(d.n - start) * sizeof(*pieces)))) {
        PyErr_NoMemory();
        goto out;
    }
    for (i = start; i < d.n; i++) {
        uint64_t a = d_addr(&d, i);
        uint32_t k = d_len(&d, i), n;
        if (a > memlen || k > memlen - a) break;
        const uint8_t *g = datagram_of(base + a, k, kind, key.buf, key.len, &n);
        if (g == NULL || n < OVERHEAD) break;
        uint32_t plen = rd16(g + 40);
        if (g[0] != VERSION || (g[1] & ~allowed_end) != FLAG_ACK || g[2] != 0 || g[3] != 0 || plen == 0 ||
            (uint64_t)plen + OVERHEAD != n || rd32(g + 4) != peer_id || rd32(g + 8) != local_id ||
            rd64(g + 12) != seq)
            break;
        uint64_t pack = rd64(g + 20);
        if (pack != ack || pack + rd32(g + 28) > right || seq + plen > room_end || total + plen > room_bytes) break;
        if (crc32_of(g, n - CRC_SIZE) != rd32(g + n - CRC_SIZE)) break;
        pieces[i - start] = (struct piece){(uint64_t)(g + HEADER_SIZE - base), plen, (g[1] & FLAG_MSG_END) != 0};
        seq += plen;
        total += plen;
        tsval = rd32(g + 32);
    }
    Py_ssize_t stop = i;
    /* pass 2: the payloads, joined or one by one, from the record of pass 1 */
    PyObject *data = split ? PyList_New(stop - start) : PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (data == NULL) goto out;
    PyObject *ends = PyList_New(0);
    if (ends == NULL) {
        Py_DECREF(data);
        goto out;
    }
    uint8_t *base_dst = split ? NULL : (uint8_t *)PyBytes_AS_STRING(data), *dst = base_dst;
    for (i = start; i < stop; i++) {
        const struct piece *pc = &pieces[i - start];
        const uint8_t *payload = base + pc->off;
        uint32_t plen = pc->len;
        if (split) {
            PyObject *b = PyBytes_FromStringAndSize((const char *)payload, plen);
            if (b == NULL) {
                Py_DECREF(data);
                Py_DECREF(ends);
                goto out;
            }
            PyList_SET_ITEM(data, i - start, b);
        } else {
            memcpy(dst, payload, plen);
            dst += plen;
            if (pc->msg_end) {
                PyObject *off = PyLong_FromSsize_t(dst - base_dst);
                if (off == NULL || PyList_Append(ends, off)) {
                    Py_XDECREF(off);
                    Py_DECREF(data);
                    Py_DECREF(ends);
                    goto out;
                }
                Py_DECREF(off);
            }
        }
    }
    result = Py_BuildValue("nNkN", stop, data, (unsigned long)tsval, ends);
out:
    PyMem_Free(pieces);
    PyBuffer_Release(&d.view);
out_mem:
    PyBuffer_Release(&mem);
    PyBuffer_Release(&key);
    return result;
}

static void put_header(uint8_t *p, unsigned flags, uint32_t src, uint32_t dst, uint64_t seq, uint64_t ack,
                       uint32_t window, uint32_t tsval, uint32_t tsecr, uint32_t plen) {
    p[0] = VERSION;
    p[1] = (uint8_t)flags;
    p[2] = 0; /* no SACK blocks: datagrams with SACKs are encoded in Python */
    p[3] = 0;
    wr32(p + 4, src);
    wr32(p + 8, dst);
    wr64(p + 12, seq);
    wr64(p + 20, ack);
    wr32(p + 28, window);
    wr32(p + 32, tsval);
    wr32(p + 36, tsecr);
    wr16(p + 40, plen);
}

/* v as an unsigned integer of at most `max`; -1 with OverflowError (or TypeError) otherwise. */
static int get_u(PyObject *v, unsigned long long max, unsigned long long *out) {
    unsigned long long x = PyLong_AsUnsignedLongLong(v); /* OverflowError for negatives and big values */
    if (x == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (x > max) {
        PyErr_SetString(PyExc_OverflowError, "encode: a field is out of its range");
        return -1;
    }
    *out = x;
    return 0;
}

/* encode(flags, src_id, dst_id, seq, ack, window, tsval, tsecr, payload) -> bytes
 * wire.encode_fields without SACK blocks. OverflowError when a field is out of its range (the caller
 * then lets struct say which); the size limit is the caller's. */
static PyObject *encode(PyObject *self, PyObject *args) {
    PyObject *f[8];
    unsigned long long v[8];
    static const unsigned long long max[8] = {0xFF, 0xFFFFFFFFULL, 0xFFFFFFFFULL, 0xFFFFFFFFFFFFFFFFULL,
                                              0xFFFFFFFFFFFFFFFFULL, 0xFFFFFFFFULL, 0xFFFFFFFFULL, 0xFFFFFFFFULL};
    Py_buffer payload;
    if (!PyArg_ParseTuple(args, "OOOOOOOOy*", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &payload))
        return NULL;
    for (int i = 0; i < 8; i++) {
        if (get_u(f[i], max[i], &v[i])) {
            PyBuffer_Release(&payload);
            return NULL;
        }
    }
    if (payload.len > 0xFFFF) {
        PyBuffer_Release(&payload);
        PyErr_SetString(PyExc_OverflowError, "encode: payload longer than 65535 bytes");
        return NULL;
    }
    Py_ssize_t n = OVERHEAD + payload.len;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out != NULL) {
        uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
        put_header(p, (unsigned)v[0], (uint32_t)v[1], (uint32_t)v[2], v[3], v[4], (uint32_t)v[5], (uint32_t)v[6],
                   (uint32_t)v[7], (uint32_t)payload.len);
        memcpy(p + HEADER_SIZE, payload.buf, payload.len);
        wr32(p + n - CRC_SIZE, crc32_of(p, n - CRC_SIZE));
    }
    PyBuffer_Release(&payload);
    return out;
}

static PyObject *s_seq, *s_data, *s_msg_end, *s_fin; /* interned attribute names of a Segment */

/* The datagram of one segment: flags ACK (| MSG_END | FIN by its flags), its seq, its data. */
static PyObject *encode_segment(PyObject *seg, uint32_t src, uint32_t dst, uint64_t ack, uint32_t window,
                                uint32_t tsval, uint32_t tsecr) {
    PyObject *seq_o = NULL, *data = NULL, *me = NULL, *fin = NULL, *out = NULL;
    if (!(seq_o = PyObject_GetAttr(seg, s_seq)) || !(data = PyObject_GetAttr(seg, s_data)) ||
        !(me = PyObject_GetAttr(seg, s_msg_end)) || !(fin = PyObject_GetAttr(seg, s_fin)))
        goto done;
    unsigned long long seq = PyLong_AsUnsignedLongLong(seq_o);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) goto done;
    int is_me = PyObject_IsTrue(me), is_fin = PyObject_IsTrue(fin);
    if (is_me < 0 || is_fin < 0) goto done;
    if (!PyBytes_Check(data) || PyBytes_GET_SIZE(data) > 0xFFFF) {
        PyErr_SetString(PyExc_TypeError, "encode_segments: a segment's data must be bytes of at most 65535");
        goto done;
    }
    Py_ssize_t plen = PyBytes_GET_SIZE(data), n = OVERHEAD + plen;
    out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    put_header(p, FLAG_ACK | (is_me ? 0x20 : 0) | (is_fin ? 0x04 : 0), src, dst, seq, ack, window, tsval, tsecr,
               (uint32_t)plen);
    memcpy(p + HEADER_SIZE, PyBytes_AS_STRING(data), plen);
    wr32(p + n - CRC_SIZE, crc32_of(p, n - CRC_SIZE));
done:
    Py_XDECREF(seq_o);
    Py_XDECREF(data);
    Py_XDECREF(me);
    Py_XDECREF(fin);
    return out;
}

/* encode_segments(src_id, dst_id, ack, window, tsval, tsecr, segments, out) -> None
 * Appends to the list `out` the datagram of each Segment (sendbuf.Segment: seq, data, msg_end, fin) of the
 * list `segments`, as Connection._emit encodes it when there are no SACK blocks to send. */
static PyObject *encode_segments(PyObject *self, PyObject *args) {
    PyObject *f[6], *segs, *out;
    unsigned long long v[6];
    static const unsigned long long max[6] = {0xFFFFFFFFULL, 0xFFFFFFFFULL, 0xFFFFFFFFFFFFFFFFULL, 0xFFFFFFFFULL,
                                              0xFFFFFFFFULL, 0xFFFFFFFFULL};
    if (!PyArg_ParseTuple(args, "OOOOOOO!O!", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &PyList_Type, &segs,
                          &PyList_Type, &out))
        return NULL;
    for (int i = 0; i < 6; i++)
        if (get_u(f[i], max[i], &v[i])) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(segs); i++) {
        /* A strong reference: the attribute look-ups run Python (a property) that may empty the list. */
        PyObject *seg = PyList_GET_ITEM(segs, i);
        Py_INCREF(seg);
        PyObject *d = encode_segment(seg, (uint32_t)v[0], (uint32_t)v[1], v[2], (uint32_t)v[3], (uint32_t)v[4],
                                     (uint32_t)v[5]);
        Py_DECREF(seg);
        if (d == NULL) return NULL;
        int r = PyList_Append(out, d);
        Py_DECREF(d);
        if (r) return NULL;
    }
    Py_RETURN_NONE;
}

/* write_frames(mem, descs, start, frame_size, kind, header, ip_partial, ident, datagrams) -> ident
 *
 * Frame i of descs gets header + datagrams[start + i] (for i < min(len(descs), len(datagrams) - start)),
 * and its descriptor the frame's length. kind 0 (udp): header is the 42-byte template of
 * UdpEncap.set_peer; per frame the IPv4 total length, ident (ident + 1, ...), header checksum (from
 * ip_partial, the template's fixed words summed mod 0xFFFF) and the UDP length are filled in, the UDP
 * checksum is 0. kind 1 (eth): header is the 14-byte Ethernet header, copied as it is.
 * Returns the last ident used. Raises ValueError, writing nothing, when a frame would not fit. */
static PyObject *write_frames(PyObject *self, PyObject *args) {
    PyObject *mem_o, *descs_o, *grams;
    Py_ssize_t start, frame_size;
    int kind;
    Py_buffer hdr;
    unsigned long ip_partial, ident;
    if (!PyArg_ParseTuple(args, "OOnniy*kkO!", &mem_o, &descs_o, &start, &frame_size, &kind, &hdr, &ip_partial,
                          &ident, &PyList_Type, &grams))
        return NULL;
    Py_buffer mem;
    descs_t d;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(mem_o, &mem, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)) {
        PyBuffer_Release(&hdr);
        return NULL;
    }
    if (get_descs(descs_o, &d, 1)) goto out_mem;
    Py_ssize_t hlen = kind == KIND_UDP ? UDP_HLEN : ETH_HLEN;
    if ((kind != KIND_UDP && kind != KIND_ETH) || hdr.len != hlen || start < 0 ||
        start > PyList_GET_SIZE(grams) || ip_partial >= 0xFFFF || ident > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "write_frames: bad kind, header, start, ip_partial or ident");
        goto out;
    }
    Py_ssize_t count = PyList_GET_SIZE(grams) - start;
    if (count > d.n) count = d.n;
    /* check every frame first: either all are written or none */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *g = PyList_GET_ITEM(grams, start + i);
        if (!PyBytes_Check(g)) {
            PyErr_SetString(PyExc_TypeError, "write_frames: datagrams must be bytes");
            goto out;
        }
        uint64_t a = d_addr(&d, i), need = (uint64_t)hlen + (uint64_t)PyBytes_GET_SIZE(g);
        if (need > (uint64_t)frame_size || need > 0xFFFF + (uint64_t)ETH_HLEN || a > (uint64_t)mem.len ||
            need > (uint64_t)mem.len - a) {
            PyErr_Format(PyExc_ValueError, "write_frames: a %zd-byte datagram does not fit its frame",
                         PyBytes_GET_SIZE(g));
            goto out;
        }
    }
    uint8_t *base = mem.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *g = PyList_GET_ITEM(grams, start + i);
        Py_ssize_t n = PyBytes_GET_SIZE(g);
        uint8_t *f = base + d_addr(&d, i);
        memcpy(f, hdr.buf, hlen);
        if (kind == KIND_UDP) {
            uint32_t total = (uint32_t)n + 28;
            ident = (ident + 1) & 0xFFFF;
            uint32_t r = (uint32_t)((ip_partial + total + ident) % 0xFFFF);
            wr16(f + 16, total);
            wr16(f + 18, (uint32_t)ident);
            wr16(f + 24, r ? 0xFFFF - r : 0);
            wr16(f + 38, (uint32_t)n + 8);
            wr16(f + 40, 0);
        }
        memcpy(f + hlen, PyBytes_AS_STRING(g), n);
        d_set_len(&d, i, (uint32_t)(hlen + n));
    }
    result = PyLong_FromUnsignedLong(ident);
out:
    PyBuffer_Release(&d.view);
out_mem:
    PyBuffer_Release(&mem);
    PyBuffer_Release(&hdr);
    return result;
}

static PyMethodDef methods[] = {
    {"rx_run", rx_run, METH_VARARGS, "the run of next-in-line data segments from start (see the source)"},
    {"encode", encode, METH_VARARGS, "wire.encode_fields without SACK blocks"},
    {"encode_segments", encode_segments, METH_VARARGS, "encode a list of segments without SACK blocks"},
    {"write_frames", write_frames, METH_VARARGS, "frame datagrams into a batch's frames"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastxfer", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastxfer(void) {
    if (!(s_seq = PyUnicode_InternFromString("seq")) || !(s_data = PyUnicode_InternFromString("data")) ||
        !(s_msg_end = PyUnicode_InternFromString("msg_end")) || !(s_fin = PyUnicode_InternFromString("fin")))
        return NULL;
    return PyModule_Create(&module);
}
