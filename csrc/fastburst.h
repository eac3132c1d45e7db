/* rx_burst: rx_canned (fasthttp.h rx_one) for a burst of frames off a lane's RX ring, kept answers straight onto
 * a lane's TX ring; part of the kbypass._fasttcp binding (included by fasttcp.c after fasthttp.h). */
#include "core/kb_lane.h"

#include <errno.h>
#include <stdio.h>

/* rx_burst(lane, tx, table, canned, now, ident, tally, max) -> (frames, kept, udp, ident, items, more, error): up to
 * max frames off the RX ring of `lane` (kbypass._fastlane.Lane.core: its struct kb_lane), each through rx_one; a
 * kept answer goes straight onto the TX ring of `tx` (the lane the host sends on, another Lane.core). items, in
 * arrival order, is what Python must see: a frame (bytes) for the slow path, a HIT's 8-tuple, a reported answer's
 * 10-tuple (its frame not sent), a kept answer the TX ring had no room or frame for (or too long for it) as a
 * 1-tuple (frame,) to send; udp counts the frames to the lane's own UDP port (nothing of TCP's: TcpHost counts them
 * as it counts the Python lane's). ident: the IPv4 ident of the last frame built. more: the burst stopped at a
 * frame only Python's lane takes (no fill slot, a chain past one frame, a bad descriptor). error: None, or the
 * exception that ended the burst early (a failed kick after the frame went onto the ring, a bad completion or
 * stash frame, no memory): what was done before it is in the rest, for Python to take before it raises. */
#define KB_BURST_BUF (14 + 60 + 60 + 65536)

/* close() clears the lane's ring pointers, and a closed socket its rings' (fastlane.c check_open) */
static int lane_open(const struct kb_lane *l) {
    return l->rx && l->fill && l->tx && l->comp && kb_ring_valid(l->rx) && kb_ring_valid(l->fill) &&
           kb_ring_valid(l->tx) && kb_ring_valid(l->comp);
}

/* The error set now, taken as an exception object (never NULL: a new reference). */
static PyObject *take_error(void) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value && tb) PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (!value) {
        value = Py_None;
        Py_INCREF(value);
    }
    return value;
}

/* The exception of a kb_lane_send error other than the ones Python's send path takes (fastlane.c lane_error's
 * wording). */
static PyObject *send_error(const struct kb_lane *t, int code) {
    char hex[24];
    switch (code) {
    case KB_LANE_E_SYS:
        errno = t->sys_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        break;
    case KB_LANE_E_COMP_ADDR:
        snprintf(hex, sizeof hex, "0x%llx", (unsigned long long)t->bad_addr);
        PyErr_Format(PyExc_IndexError, "completed address %s is outside the UMEM", hex);
        break;
    case KB_LANE_E_STASH:
        PyErr_SetString(PyExc_RuntimeError, "stash frame outside the UMEM");
        break;
    default:
        PyErr_Format(PyExc_SystemError, "kb_lane error %d", code);
    }
    return take_error();
}

static PyObject *mod_rx_burst(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *tally;
    if (nargs != 8 || !PyCapsule_IsValid(args[0], KB_LANE_CAPSULE) || !PyCapsule_IsValid(args[1], KB_LANE_CAPSULE) ||
        !PyDict_Check(args[2]) || !PyDict_Check(args[3]) || tally_arg(args, nargs, 6, &tally)) {
        PyErr_SetString(PyExc_TypeError, "rx_burst(lane, tx, table, canned, now, ident, tally, max): two Lane.core, "
                                         "two dicts of predictions, the time, an IPv4 ident, a dict or None, a count");
        return NULL;
    }
    struct kb_lane *l = PyCapsule_GetPointer(args[0], KB_LANE_CAPSULE), *t = PyCapsule_GetPointer(args[1], KB_LANE_CAPSULE);
    double now = PyFloat_AsDouble(args[4]);
    unsigned long ident = PyLong_AsUnsignedLongMask(args[5]);
    long max = PyLong_AsLong(args[7]);
    if (PyErr_Occurred()) return NULL;
    if (!lane_open(l) || !lane_open(t)) {
        PyErr_SetString(PyExc_ValueError, "rx_burst: the lane is closed");
        return NULL;
    }
    /* the frame in and the answer out: static buffers (a fresh 64 KiB block each burst costs the page faults
     * of memory the heap gives back and takes again), unless a call is already under way (a finalizer run by
     * the collector inside this one) */
    static uint8_t in_buf[KB_BURST_BUF], tx_buf[KB_BURST_BUF];
    static int busy;
    uint8_t *in = busy ? PyMem_Malloc(KB_BURST_BUF) : in_buf, *tx = busy ? PyMem_Malloc(KB_BURST_BUF) : tx_buf;
    int mine = !busy;
    busy = 1;
    PyObject *items = PyList_New(0), *res = NULL, *err = NULL;
    if (!in || !tx || !items) {
        PyErr_NoMemory();
        goto out;
    }
    long frames = 0, kept = 0, udp = 0;
    int more = 0, tx_ok = 1; /* once a send fails, the rest of the burst's answers go through Python too: in order */
    /* rx_one and the objects made for Python may run any Python (the collector's finalizers, a key's __eq__),
     * which may close either lane (its ring pointers cleared): looked at again before each read and send */
    while (!err && frames < max && lane_open(l) && lane_open(t)) {
        uint32_t n;
        int r = kb_lane_rx_copy(l, in, KB_BURST_BUF, &n);
        if (r == KB_LANE_EMPTY) break;
        if (r != KB_LANE_FRAME) { /* no fill slot, a longer chain, an error: the Python lane takes it */
            more = 1;
            break;
        }
        frames++;
        if (kb_udp_accept(&l->me, in, n)) { /* UDP to the lane's own port: nothing of TCP's */
            udp++;
            continue;
        }
        size_t out_len = 0;
        PyObject *o = rx_one(in, n, args[2], args[3], now, (unsigned)((ident + 1) & 0xFFFF), tally, tx, &out_len);
        if (!o) { /* the frame is lost as on a wire (the peer sends it again); what came before stands */
            err = take_error();
            break;
        }
        if (o == Py_Ellipsis || (PyTuple_Check(o) && PyTuple_GET_SIZE(o) == 10)) ident = (ident + 1) & 0xFFFF;
        if (o == Py_Ellipsis) {
            kept++;
            int s = tx_ok && lane_open(t) ? kb_lane_send(t, tx, (uint32_t)out_len, NULL, 0, 0, 0) : KB_LANE_NO_SLOT;
            if (s == KB_LANE_E_SYS) /* on the ring: only the kick failed */
                err = send_error(t, s);
            else if (s != KB_LANE_SENT)
                tx_ok = 0;
            Py_DECREF(o);
            o = NULL;
            if (s == KB_LANE_NO_SLOT || s == KB_LANE_NO_FRAME || s == KB_LANE_E_TOO_BIG) {
                /* no TX slot or frame now (or longer than one): Python's send path has the remedies */
                o = Py_BuildValue("(y#)", (const char *)tx, (Py_ssize_t)out_len);
                if (!o) err = take_error();
            } else if (s != KB_LANE_SENT && s != KB_LANE_E_SYS) { /* not sent: lost as on a wire, and raised */
                err = send_error(t, s);
            }
            if (!o) continue;
        } else if (o == Py_None) {
            Py_DECREF(o);
            o = PyBytes_FromStringAndSize((const char *)in, n);
            if (!o) {
                err = take_error();
                break;
            }
        }
        if (PyList_Append(items, o) < 0) err = take_error();
        Py_DECREF(o);
    }
    res = Py_BuildValue("(lllkOiO)", frames, kept, udp, ident, items, more, err ? err : Py_None);
out:
    if (mine) {
        busy = 0;
    } else {
        PyMem_Free(in);
        PyMem_Free(tx);
    }
    Py_XDECREF(items);
    Py_XDECREF(err);
    return res;
}
