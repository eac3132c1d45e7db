/* kbypass._fastxfer: the bulk-transfer path of the reliable transport (kbypass.proto.transport), a CPython
 * binding over the C core's transport codec (csrc/core/kb_xfer.h). This file parses arguments, opens
 * buffers, builds the Python results and raises; the core does the per-datagram work.
 *
 * A transfer moves ~100k datagrams a second per side, and in Python each one costs ~10 us on each side:
 * the frame check, the CRC, the header decode, the in-order delivery on the receiver; the header encode,
 * the CRC and the frame build on the sender. Everything with a decision in it (handshake, SACK, loss
 * detection, timers, congestion control, any datagram that is not the next in-order data segment) stays
 * in the sans-IO Python, which is also the reference:
 *
 *   rx_run       the longest run of frames, from `start`, that are each the next data segment in line of
 *                one connection (the next in-order bytes, or the next bytes of the out-of-order run above
 *                a hole) and tell its sender side nothing new (Connection.rx_run_params gives the
 *                conditions, Connection.receive_run applies the run's effects). Their payloads come back
 *                joined (with the message boundaries in message mode), or one per segment for the
 *                out-of-order buffer. The first frame that is anything else ends the run and goes to the
 *                Python path, unread here. Joined payloads are copied as their CRC is checked, a chunk
 *                at a time (kb_xfer_rx_run's dst): each payload byte is read from UMEM once.
 *   encode       wire.encode_fields for a datagram without SACK blocks: header, payload, CRC32 trailer.
 *   write_frames UdpEncap.frame / EthEncap.frame for a list of datagrams, written straight into the
 *                frames of a batch (descriptor lengths set too).
 *   write_chains the same as chains of frames (multi-buffer AF_XDP); a data segment not encoded yet
 *                (xfer.datapath.Unencoded) is encoded straight into its chain: its payload copied once.
 *   lane_chains  write_chains into a chains lane's stash frames (kb_lane, through its capsule), straight
 *                onto its TX ring: a jumbo sender's frames cycle from completion to TX with no Python.
 *   crc64        CRC-64/XZ of a buffer (kbypass xfer --digest crc64).
 *
 * Descriptors are kbypass.port.batch.DESC records (u64 addr, u32 len, u32 options), any stride.
 */
#include "pydescs.h"

#include <sys/socket.h>

#include "core/kb_lane.h"
#include "core/kb_port.h"
#include "core/kb_umem.h"
#include "core/kb_xfer.h"

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
 * the last one's timestamp (0 when stop == start). Nothing is changed in mem or descs.
 *
 * `descs` are in ring order: with multi-buffer AF_XDP a packet is a chain of frames (XDP_PKT_CONTD on all but
 * its last, Batch.ring_descs()); start and stop count packets, and a chain's payload is gathered from its
 * frames (its headers read from the first). Without chains packets and frames are the same. */
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
    Py_buffer mem, dv;
    struct kb_descs d;
    PyObject *result = NULL, *data = NULL, *ends = NULL;
    struct kb_xfer_piece *pieces = NULL;
    if (PyObject_GetBuffer(mem_o, &mem, PyBUF_C_CONTIGUOUS)) {
        PyBuffer_Release(&key);
        return NULL;
    }
    if (get_descs(descs_o, &dv, &d, 0)) goto out_mem;
    if (start < 0 || (size_t)start > d.n || (kind != KB_XFER_UDP && kind != KB_XFER_ETH) ||
        mode < KB_RUN_IN_ORDER || mode > KB_RUN_MESSAGES) {
        PyErr_SetString(PyExc_ValueError, "rx_run: start beyond the batch, or an unknown kind or mode");
        goto out;
    }
    /* The core records where each payload is (pass 1); the copies below use only that record and never
     * look at the frames or descriptors again: they allocate Python objects, a garbage collection may run
     * a finalizer, and that Python code may change the descriptors or the frames (it did, in a test: a
     * NULL dereference and a heap overflow). What a finalizer changes in the payload bytes meanwhile is its
     * own business; every copy stays inside the memory and the output that pass 1 sized. */
    /* descs in ring order: packet `start` begins at frame `first` (the same index without chains) */
    size_t first = kb_xfer_packet_frame(&d, (size_t)start);
    if (d.n > first && !(pieces = PyMem_Malloc((d.n - first) * sizeof(*pieces)))) {
        PyErr_NoMemory();
        goto out;
    }
    struct kb_xfer_run run = {kind, mode, key.buf, (size_t)key.len, local_id, peer_id,
                              seq0, ack, right, room_end, room_bytes};
    uint64_t total = 0;
    uint32_t tsval = 0;
    size_t npieces = 0, packets = 0;
    int split = mode == KB_RUN_OUT_OF_ORDER;
    /* Joined payloads are copied by the core as it checks them (each byte read from UMEM once), into a
     * bytes object sized before the run for the most it can take and cut to what it took after: the
     * allocation (which may run a finalizer) comes before the core reads anything. */
    uint8_t *joined = NULL;
    if (!split) {
        uint64_t bound = kb_xfer_rx_bound(&d, first, room_bytes);
        if (bound > (uint64_t)PY_SSIZE_T_MAX - 64) {
            PyErr_NoMemory();
            goto out;
        }
        if ((data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)bound)) == NULL) goto out;
        joined = (uint8_t *)PyBytes_AS_STRING(data);
    }
    kb_xfer_rx_run(mem.buf, (uint64_t)mem.len, &d, first, &run, pieces, &npieces, &total, &tsval, &packets, joined);
    size_t stop = (size_t)start + packets;
    if (split) data = PyList_New((Py_ssize_t)packets);
    else if (_PyBytes_Resize(&data, (Py_ssize_t)total)) goto out; /* (data is NULL then) */
    if (data == NULL || (ends = PyList_New(0)) == NULL) goto out;
    const uint8_t *base = mem.buf;
    Py_ssize_t at = 0; /* joined: where in the output the piece ends (the core copied the bytes) */
    size_t g0 = 0, item = 0; /* split: the first piece of the datagram being gathered, and its list index */
    for (size_t i = 0; i < npieces; i++) {
        const struct kb_xfer_piece *pc = &pieces[i];
        if (split) {
            if (!pc->last) continue;
            Py_ssize_t len = 0;
            for (size_t j = g0; j <= i; j++) len += pieces[j].len;
            PyObject *b = PyBytes_FromStringAndSize(NULL, len);
            if (b == NULL) goto out;
            uint8_t *to = (uint8_t *)PyBytes_AS_STRING(b);
            for (size_t j = g0; j <= i; j++, to += pieces[j - 1].len) memcpy(to, base + pieces[j].off, pieces[j].len);
            PyList_SET_ITEM(data, (Py_ssize_t)item++, b);
            g0 = i + 1;
            continue;
        }
        at += pc->len;
        if (pc->msg_end) {
            PyObject *off = PyLong_FromSsize_t(at);
            int bad = off == NULL || PyList_Append(ends, off);
            Py_XDECREF(off);
            if (bad) goto out;
        }
    }
    result = Py_BuildValue("nOkO", (Py_ssize_t)stop, data, (unsigned long)tsval, ends);
out:
    Py_XDECREF(data);
    Py_XDECREF(ends);
    PyMem_Free(pieces);
    PyBuffer_Release(&dv);
out_mem:
    PyBuffer_Release(&mem);
    PyBuffer_Release(&key);
    return result;
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

/* n fields of objs into v, each at most its max. */
static int get_fields(PyObject **objs, const unsigned long long *max, unsigned long long *v, int n) {
    for (int i = 0; i < n; i++)
        if (get_u(objs[i], max[i], &v[i])) return -1;
    return 0;
}

#define U32 0xFFFFFFFFULL
#define U64 0xFFFFFFFFFFFFFFFFULL

/* A bytes object holding the datagram of h and payload (kb_xfer_encode). */
static PyObject *encoded(const struct kb_xfer_fields *h, const char *payload, Py_ssize_t plen) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, KB_XFER_OVERHEAD + plen);
    if (out) kb_xfer_encode((uint8_t *)PyBytes_AS_STRING(out), h, (const uint8_t *)payload, (uint32_t)plen);
    return out;
}

/* encode(flags, src_id, dst_id, seq, ack, window, tsval, tsecr, payload) -> bytes
 * wire.encode_fields without SACK blocks. OverflowError when a field is out of its range (the caller
 * then lets struct say which); the size limit is the caller's. */
static PyObject *encode(PyObject *self, PyObject *args) {
    PyObject *f[8];
    unsigned long long v[8];
    static const unsigned long long max[8] = {0xFF, U32, U32, U64, U64, U32, U32, U32};
    Py_buffer payload;
    if (!PyArg_ParseTuple(args, "OOOOOOOOy*", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &payload))
        return NULL;
    PyObject *out = NULL;
    if (get_fields(f, max, v, 8)) goto done;
    if (payload.len > KB_XFER_MAX_PAYLOAD) {
        PyErr_SetString(PyExc_OverflowError, "encode: payload longer than 65535 bytes");
        goto done;
    }
    struct kb_xfer_fields h = {(uint32_t)v[0], (uint32_t)v[1], (uint32_t)v[2], v[3], v[4],
                               (uint32_t)v[5], (uint32_t)v[6], (uint32_t)v[7]};
    out = encoded(&h, payload.buf, payload.len);
done:
    PyBuffer_Release(&payload);
    return out;
}

static PyObject *s_seq, *s_data, *s_msg_end, *s_fin; /* interned attribute names of a Segment */

/* The header fields of one segment's datagram (sendbuf.Segment: seq, data, msg_end, fin) into h (flags and
 * seq; the rest as given) and its data's buffer into pb (bytes, or a view of the send buffer's bytes:
 * SendBuffer.cut_run does not copy a segment inside a chunk); Py_None, or NULL with an error (pb then not
 * held). Segments are Python objects of the transport (not state shared with C): reading their attributes is
 * the binding's job. */
static PyObject *encode_segment_header(PyObject *seg, struct kb_xfer_fields *h, Py_buffer *pb) {
    PyObject *seq_o = NULL, *data = NULL, *me = NULL, *fin = NULL, *out = NULL;
    if (!(seq_o = PyObject_GetAttr(seg, s_seq)) || !(data = PyObject_GetAttr(seg, s_data)) ||
        !(me = PyObject_GetAttr(seg, s_msg_end)) || !(fin = PyObject_GetAttr(seg, s_fin)))
        goto done;
    unsigned long long seq = PyLong_AsUnsignedLongLong(seq_o);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) goto done;
    int is_me = PyObject_IsTrue(me), is_fin = PyObject_IsTrue(fin);
    if (is_me < 0 || is_fin < 0) goto done;
    if (PyObject_GetBuffer(data, pb, PyBUF_SIMPLE)) goto done;
    h->flags = kb_xfer_segment_flags(is_me, is_fin);
    h->seq = seq;
    out = Py_None;
    Py_INCREF(out);
done:
    Py_XDECREF(seq_o);
    Py_XDECREF(data);
    Py_XDECREF(me);
    Py_XDECREF(fin);
    return out;
}

/* The datagram of one segment, the header fields but flags and seq from h. */
static PyObject *encode_segment(PyObject *seg, struct kb_xfer_fields *h) {
    Py_buffer pb;
    PyObject *ok = encode_segment_header(seg, h, &pb), *out = NULL;
    if (ok == NULL) return NULL;
    Py_DECREF(ok);
    if (pb.len > KB_XFER_MAX_PAYLOAD)
        PyErr_SetString(PyExc_TypeError, "encode_segments: a segment's data must be at most 65535 bytes");
    else
        out = encoded(h, pb.buf, pb.len);
    PyBuffer_Release(&pb);
    return out;
}

/* encode_segments(src_id, dst_id, ack, window, tsval, tsecr, segments, out) -> None
 * Appends to the list `out` the datagram of each Segment of the list `segments`, as Connection._emit
 * encodes it when there are no SACK blocks to send. */
static PyObject *encode_segments(PyObject *self, PyObject *args) {
    PyObject *f[6], *segs, *out;
    unsigned long long v[6];
    static const unsigned long long max[6] = {U32, U32, U64, U32, U32, U32};
    if (!PyArg_ParseTuple(args, "OOOOOOO!O!", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &PyList_Type, &segs,
                          &PyList_Type, &out))
        return NULL;
    if (get_fields(f, max, v, 6)) return NULL;
    struct kb_xfer_fields h = {0, (uint32_t)v[0], (uint32_t)v[1], 0, v[2], (uint32_t)v[3], (uint32_t)v[4],
                               (uint32_t)v[5]};
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(segs); i++) {
        /* A strong reference: the attribute look-ups run Python (a property) that may empty the list. */
        PyObject *seg = PyList_GET_ITEM(segs, i);
        Py_INCREF(seg);
        PyObject *d = encode_segment(seg, &h);
        Py_DECREF(seg);
        if (d == NULL) return NULL;
        int r = PyList_Append(out, d);
        Py_DECREF(d);
        if (r) return NULL;
    }
    Py_RETURN_NONE;
}

/* write_frames(mem, descs, start, frame_size, max_len, kind, header, ident, datagrams) -> ident
 *
 * Frame i of descs gets header + datagrams[start + i] (for i < min(len(descs), len(datagrams) - start)),
 * and its descriptor the frame's length (kb_xfer_frame_write). A frame is at most max_len bytes and stays
 * inside its UMEM frame, the aligned chunk of frame_size bytes (a power of two) it starts in. Returns the
 * last ident used. Raises, writing nothing: ValueError for a bad argument or a frame that would not fit,
 * TypeError for a datagram that is not bytes. */
static PyObject *write_frames(PyObject *self, PyObject *args) {
    PyObject *mem_o, *descs_o, *grams;
    Py_ssize_t start, frame_size, max_len, ident;
    int kind;
    Py_buffer hdr;
    if (!PyArg_ParseTuple(args, "OOnnniy*nO", &mem_o, &descs_o, &start, &frame_size, &max_len, &kind, &hdr,
                          &ident, &grams))
        return NULL;
    Py_buffer mem, dv;
    struct kb_descs d;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(mem_o, &mem, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)) {
        PyBuffer_Release(&hdr);
        return NULL;
    }
    if (get_descs(descs_o, &dv, &d, 1)) goto out_mem;
    if (!PyList_CheckExact(grams)) {
        PyErr_SetString(PyExc_TypeError, "write_frames: datagrams must be a list");
        goto out;
    }
    if ((kind != KB_XFER_UDP && kind != KB_XFER_ETH) || hdr.len != kb_xfer_frame_header(kind) || start < 0 ||
        start > PyList_GET_SIZE(grams) || ident < 0 || ident > 0xFFFF || frame_size <= 0 || (frame_size & (frame_size - 1)) ||
        max_len < 0) {
        PyErr_SetString(PyExc_ValueError, "write_frames: bad kind, header, start, ident, frame size or limit");
        goto out;
    }
    Py_ssize_t count = PyList_GET_SIZE(grams) - start;
    if ((size_t)count > d.n) count = (Py_ssize_t)d.n;
    /* check every frame first: either all are written or none */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *g = PyList_GET_ITEM(grams, start + i);
        if (!PyBytes_Check(g)) {
            PyErr_SetString(PyExc_TypeError, "write_frames: datagrams must be bytes");
            goto out;
        }
        if (!kb_xfer_frame_fits(kind, (uint64_t)PyBytes_GET_SIZE(g), (uint64_t)max_len, (uint64_t)frame_size,
                                kb_descs_addr(&d, (size_t)i), (uint64_t)mem.len)) {
            PyErr_Format(PyExc_ValueError, "write_frames: a %zd-byte datagram does not fit its frame",
                         PyBytes_GET_SIZE(g));
            goto out;
        }
    }
    uint32_t id = (uint32_t)ident;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *g = PyList_GET_ITEM(grams, start + i);
        uint8_t *f = (uint8_t *)mem.buf + kb_descs_addr(&d, (size_t)i);
        uint32_t n = kb_xfer_frame_write(f, kind, hdr.buf, &id, (const uint8_t *)PyBytes_AS_STRING(g),
                                         (uint32_t)PyBytes_GET_SIZE(g));
        kb_descs_set_len(&d, (size_t)i, n);
    }
    result = PyLong_FromUnsignedLong(id);
out:
    PyBuffer_Release(&dv);
out_mem:
    PyBuffer_Release(&mem);
    PyBuffer_Release(&hdr);
    return result;
}


static PyObject *s_fields, *s_seg; /* interned attribute names of an unencoded datagram (xfer.datapath.Unencoded) */

/* One datagram of write_chains' list: encoded bytes, or a data segment and the header fields to encode it
 * with (straight into its chain). The buffer holds the bytes or the segment's data while they are written. */
struct item {
    Py_buffer pb;
    int encode;
    struct kb_xfer_fields h;
    size_t k; /* the frames of its chain, as checked */
};

/* The item of datagram g: bytes, or an object with `fields` (src_id, dst_id, ack, window, tsval, tsecr) and
 * `seg` (a Segment: seq, data, msg_end, fin). -1 with TypeError / OverflowError otherwise. */
static int get_item(PyObject *g, struct item *it) {
    it->encode = !PyBytes_Check(g);
    if (!it->encode) return PyObject_GetBuffer(g, &it->pb, PyBUF_SIMPLE);
    PyObject *fields = PyObject_GetAttr(g, s_fields), *seg = NULL;
    int rc = -1;
    if (fields == NULL || (seg = PyObject_GetAttr(g, s_seg)) == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError))
            PyErr_SetString(PyExc_TypeError, "write_chains: datagrams must be bytes (or unencoded segments)");
        goto done;
    }
    if (!PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) != 6) {
        PyErr_SetString(PyExc_TypeError, "write_chains: a datagram is bytes or has fields (6 ints) and seg");
        goto done;
    }
    unsigned long long v[6];
    static const unsigned long long max[6] = {U32, U32, U64, U32, U32, U32};
    if (get_fields(&PyTuple_GET_ITEM(fields, 0), max, v, 6)) goto done;
    it->h = (struct kb_xfer_fields){0, (uint32_t)v[0], (uint32_t)v[1], 0, v[2], (uint32_t)v[3], (uint32_t)v[4],
                                    (uint32_t)v[5]};
    PyObject *out = encode_segment_header(seg, &it->h, &it->pb);
    rc = out == NULL ? -1 : 0;
    Py_XDECREF(out);
done:
    Py_XDECREF(fields);
    Py_XDECREF(seg);
    return rc;
}

/* write_chains(mem, descs, start, frame_size, max_len, max_frames, kind, header, ident, datagrams)
 *     -> (ident, frames, written)
 *
 * write_frames for a multi-buffer port: descs are empty frames (Port.alloc), and datagrams[start:] are
 * written in order, each as a chain of as many frames as it needs (at most max_frames: the kernel's limit)
 * with XDP_PKT_CONTD in the options of all but its last (kb_xfer_chain_write), until a datagram does not fit
 * the frames left. A datagram is bytes, or a data segment not encoded yet (xfer.datapath.Unencoded: `fields`
 * and `seg`), which is encoded straight into its chain (kb_xfer_chain_encode: the same frames as its bytes
 * would make, the payload copied once). Returns the last ident used, the frames used (descs[:frames], ring
 * order: Batch.from_ring) and how many datagrams were written. Raises, writing nothing, ValueError for a bad
 * argument or a datagram no chain carries, TypeError for one that is neither, OverflowError for a field out
 * of its range. */
static PyObject *write_chains(PyObject *self, PyObject *args) {
    PyObject *mem_o, *descs_o, *grams;
    Py_ssize_t start, frame_size, max_len, max_frames, ident;
    int kind;
    Py_buffer hdr;
    if (!PyArg_ParseTuple(args, "OOnnnniy*nO", &mem_o, &descs_o, &start, &frame_size, &max_len, &max_frames, &kind,
                          &hdr, &ident, &grams))
        return NULL;
    Py_buffer mem, dv;
    struct kb_descs d;
    PyObject *result = NULL;
    struct item *items = NULL;
    Py_ssize_t got = 0; /* items holding a buffer */
    if (PyObject_GetBuffer(mem_o, &mem, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)) {
        PyBuffer_Release(&hdr);
        return NULL;
    }
    if (get_descs(descs_o, &dv, &d, 1)) goto out_mem;
    if (!PyList_CheckExact(grams)) {
        PyErr_SetString(PyExc_TypeError, "write_chains: datagrams must be a list");
        goto out;
    }
    if ((kind != KB_XFER_UDP && kind != KB_XFER_ETH) || hdr.len != kb_xfer_frame_header(kind) || start < 0 ||
        start > PyList_GET_SIZE(grams) || ident < 0 || ident > 0xFFFF || frame_size <= 0 ||
        (frame_size & (frame_size - 1)) || max_len < 0 || max_frames < 1) {
        PyErr_SetString(PyExc_ValueError, "write_chains: bad kind, header, start, ident, frame size or limit");
        goto out;
    }
    Py_ssize_t avail = PyList_GET_SIZE(grams) - start;
    if (avail && !(items = PyMem_Calloc((size_t)avail, sizeof(*items)))) {
        PyErr_NoMemory();
        goto out;
    }
    /* Read the datagrams that fit the frames in order, checking each (the attribute look-ups may run Python),
     * then check them all again with no Python in between (that Python may have rewritten the descriptors,
     * which stay writable), then write (either all that fit are written or none). */
    Py_ssize_t count = 0;
    size_t at = 0;
    for (; count < avail; count++) {
        /* a strong reference: reading an unencoded datagram's attributes may run Python that changes the list */
        if (start + count >= PyList_GET_SIZE(grams)) break;
        PyObject *g = PyList_GET_ITEM(grams, start + count);
        Py_INCREF(g);
        int bad = get_item(g, &items[count]);
        Py_DECREF(g);
        if (bad) goto out;
        got++;
        struct item *it = &items[count];
        if (it->encode && it->pb.len > KB_XFER_MAX_PAYLOAD) {
            PyErr_SetString(PyExc_ValueError, "write_chains: a segment's data must be at most 65535 bytes");
            goto out;
        }
        uint64_t dlen = (uint64_t)it->pb.len + (it->encode ? KB_XFER_OVERHEAD : 0);
        size_t k = kb_xfer_chain_fits(kind, dlen, (uint64_t)max_len, (uint64_t)frame_size, (size_t)max_frames, &d, at,
                                      (uint64_t)mem.len);
        if (k == KB_XFER_NO_FRAMES) break; /* the frames ran out: the rest is for the next call */
        if (k == 0) {
            PyErr_Format(PyExc_ValueError, "write_chains: a %llu-byte datagram fits no chain of at most %zd frames",
                         (unsigned long long)dlen, max_frames);
            goto out;
        }
        it->k = k;
        at += k;
    }
    at = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        struct item *it = &items[i];
        uint64_t dlen = (uint64_t)it->pb.len + (it->encode ? KB_XFER_OVERHEAD : 0);
        if (kb_xfer_chain_fits(kind, dlen, (uint64_t)max_len, (uint64_t)frame_size, (size_t)max_frames, &d, at,
                               (uint64_t)mem.len) != it->k) {
            PyErr_SetString(PyExc_ValueError, "write_chains: the descriptors changed while the datagrams were read");
            goto out;
        }
        at += it->k;
    }
    uint32_t id = (uint32_t)ident;
    at = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        struct item *it = &items[i];
        uint32_t dlen = (uint32_t)it->pb.len + (it->encode ? KB_XFER_OVERHEAD : 0);
        size_t k = it->k;
        if (it->encode)
            kb_xfer_chain_encode(mem.buf, &d, at, k, (uint64_t)frame_size, kind, hdr.buf, &id, &it->h, it->pb.buf,
                                 (uint32_t)it->pb.len);
        else
            kb_xfer_chain_write(mem.buf, &d, at, k, (uint64_t)frame_size, kind, hdr.buf, &id, it->pb.buf, dlen);
        at += k;
    }
    result = Py_BuildValue("knn", (unsigned long)id, (Py_ssize_t)at, count);
out:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&items[i].pb);
    PyMem_Free(items);
    PyBuffer_Release(&dv);
out_mem:
    PyBuffer_Release(&mem);
    PyBuffer_Release(&hdr);
    return result;
}

/* lane_chains(core, max_len, kind, header, ident, datagrams, start) -> (ident, sent)
 *
 * write_chains and the TX ring in one call, for a sender of jumbo chains: datagrams[start:] (as write_chains
 * takes them: bytes, or unencoded segments encoded straight into their frames) each written as a chain of
 * frames from the stash of a chains lane (`core`: kbypass._fastlane.Lane.core), its descriptors put on the
 * lane's TX ring (XDP_PKT_CONTD on all but a chain's last), the frames marked TX and the port's counters
 * kept, as kb_lane_send does. The stash takes the lane's completions back first (kb_lane_reclaim), so a
 * flight's frames cycle from the completion ring to the TX ring with no Python in between (the batch path
 * took them from the port's free list and gave them back through numpy at every send). Stops at the first
 * datagram the stash has too few frames for (the caller refills it: Lane.give) or the TX ring no room for,
 * even after a kick. No kick otherwise: the caller's (flush_tx). Returns the last IP ident used and how many
 * datagrams went. ValueError for a bad argument or a datagram no chain carries, TypeError for one that is
 * neither bytes nor a segment, OverflowError for a field out of range; what went before it stays sent. */
static PyObject *lane_chains(PyObject *self, PyObject *args) {
    PyObject *cap, *grams;
    Py_ssize_t max_len, ident, start;
    int kind;
    Py_buffer hdr;
    if (!PyArg_ParseTuple(args, "Oniy*nOn", &cap, &max_len, &kind, &hdr, &ident, &grams, &start)) return NULL;
    PyObject *result = NULL;
    struct kb_lane *l = PyCapsule_GetPointer(cap, KB_LANE_CAPSULE);
    if (l == NULL) goto out;
    if (!PyList_CheckExact(grams)) {
        PyErr_SetString(PyExc_TypeError, "lane_chains: datagrams must be a list");
        goto out;
    }
    if ((kind != KB_XFER_UDP && kind != KB_XFER_ETH) || hdr.len != kb_xfer_frame_header(kind) || start < 0 ||
        ident < 0 || ident > 0xFFFF || max_len < 0 || !l->chains || l->max_frames == 0 ||
        l->max_frames > KB_LANE_STASH_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "lane_chains: bad kind, header, start, ident or limit, or not a chains lane");
        goto out;
    }
    struct kb_desc chain[KB_LANE_STASH_SLOTS]; /* the next chain's frames: the stash's top, last first */
    uint32_t id = (uint32_t)ident, fs = l->frame_size;
    Py_ssize_t sent = 0;
    int kicked = 0;
    for (Py_ssize_t i = start; i < PyList_GET_SIZE(grams); i++) {
        struct item it;
        PyObject *g = PyList_GET_ITEM(grams, i);
        Py_INCREF(g); /* reading an unencoded datagram's attributes may run Python that changes the list */
        int bad = get_item(g, &it);
        Py_DECREF(g);
        if (bad) goto out;
        if (it.encode && it.pb.len > KB_XFER_MAX_PAYLOAD) {
            PyBuffer_Release(&it.pb);
            PyErr_SetString(PyExc_ValueError, "lane_chains: a segment's data must be at most 65535 bytes");
            goto out;
        }
        uint64_t dlen = (uint64_t)it.pb.len + (it.encode ? KB_XFER_OVERHEAD : 0);
        size_t k = KB_XFER_NO_FRAMES;
        struct kb_descs d = {(uint8_t *)chain, 0, sizeof(struct kb_desc)};
        for (int pass = 0; pass < 2 && k == KB_XFER_NO_FRAMES; pass++) {
            if (pass && kb_lane_reclaim(l) < 0) {
                PyBuffer_Release(&it.pb);
                PyErr_SetString(PyExc_RuntimeError, "lane_chains: a completed address outside the UMEM");
                goto out;
            }
            d.n = (size_t)l->nstash < l->max_frames ? (size_t)l->nstash : l->max_frames;
            for (size_t m = 0; m < d.n; m++) chain[m] = (struct kb_desc){l->stash[l->nstash - 1 - (int)m], 0, 0};
            k = kb_xfer_chain_fits(kind, dlen, (uint64_t)max_len, fs, l->max_frames, &d, 0, l->umem_size);
        }
        if (k == 0) {
            PyBuffer_Release(&it.pb);
            PyErr_Format(PyExc_ValueError, "lane_chains: a %llu-byte datagram fits no chain of at most %u frames",
                         (unsigned long long)dlen, l->max_frames);
            goto out;
        }
        uint32_t idx = 0, got = k == KB_XFER_NO_FRAMES ? 0 : kb_ring_prod_reserve(l->tx, (uint32_t)k, &idx);
        if (k != KB_XFER_NO_FRAMES && got < k && !kicked) {
            kb_ring_prod_cancel(l->tx, got); /* let the kernel drain the ring, then look once more */
            kicked = 1;
            l->stats[KB_TX_KICKS]++;
            sendto(l->fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
            got = kb_ring_prod_reserve(l->tx, (uint32_t)k, &idx);
        }
        if (k == KB_XFER_NO_FRAMES || got < k) {
            if (k != KB_XFER_NO_FRAMES) kb_ring_prod_cancel(l->tx, got);
            PyBuffer_Release(&it.pb);
            break;
        }
        if (it.encode)
            kb_xfer_chain_encode(l->umem, &d, 0, k, fs, kind, hdr.buf, &id, &it.h, it.pb.buf, (uint32_t)it.pb.len);
        else
            kb_xfer_chain_write(l->umem, &d, 0, k, fs, kind, hdr.buf, &id, it.pb.buf, (uint32_t)dlen);
        PyBuffer_Release(&it.pb);
        uint64_t bytes = 0;
        for (size_t m = 0; m < k; m++) {
            *kb_ring_desc(l->tx, idx + (uint32_t)m) = chain[m];
            l->state[chain[m].addr >> l->shift] = KB_FRAME_TX;
            bytes += chain[m].len;
        }
        l->nstash -= (int)k;
        kb_ring_prod_submit(l->tx, (uint32_t)k);
        l->stats[KB_IN_TX] += k;
        l->stats[KB_TX_PACKETS]++;
        l->stats[KB_TX_BYTES] += bytes;
        sent++;
    }
    result = Py_BuildValue("kn", (unsigned long)id, sent);
out:
    PyBuffer_Release(&hdr);
    return result;
}

/* crc64(crc, data) -> int: kb_xfer_crc64, continuing crc over a buffer of any length (the GIL is let go over
 * large ones, as hashlib does: a reader thread may hash while the transport runs). */
static PyObject *crc64(PyObject *self, PyObject *args) {
    unsigned long long crc;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "Ky*", &crc, &data)) return NULL;
    uint64_t out;
    if (data.len >= 65536) {
        Py_BEGIN_ALLOW_THREADS
        out = kb_xfer_crc64(crc, data.buf, (size_t)data.len);
        Py_END_ALLOW_THREADS
    } else {
        out = kb_xfer_crc64(crc, data.buf, (size_t)data.len);
    }
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLongLong(out);
}

static PyMethodDef methods[] = {
    {"crc64", crc64, METH_VARARGS, "CRC-64/XZ of a buffer, continuing a crc (xfer --digest crc64)"},
    {"rx_run", rx_run, METH_VARARGS, "the run of next-in-line data segments from start (see the source)"},
    {"encode", encode, METH_VARARGS, "wire.encode_fields without SACK blocks"},
    {"encode_segments", encode_segments, METH_VARARGS, "encode a list of segments without SACK blocks"},
    {"write_frames", write_frames, METH_VARARGS, "frame datagrams into a batch's frames"},
    {"write_chains", write_chains, METH_VARARGS, "frame datagrams into chains of a batch's frames"},
    {"lane_chains", lane_chains, METH_VARARGS, "write_chains into a lane's stash frames, onto its TX ring"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kbypass._fastxfer",
                                     "the transport codec of the C core (kb_xfer): rx_run, encode, write_frames", -1, methods};

PyMODINIT_FUNC PyInit__fastxfer(void) {
    if (!(s_seq = PyUnicode_InternFromString("seq")) || !(s_data = PyUnicode_InternFromString("data")) ||
        !(s_msg_end = PyUnicode_InternFromString("msg_end")) || !(s_fin = PyUnicode_InternFromString("fin")) ||
        !(s_fields = PyUnicode_InternFromString("fields")) || !(s_seg = PyUnicode_InternFromString("seg")))
        return NULL;
    return PyModule_Create(&module);
}
