/* Canned answers on the TCP fast path (csrc/core/kb_http.h): kbypass._fasttcp.Canned and rx_canned, part of
 * the kbypass._fasttcp binding (included by fasttcp.c, after its Prediction type).
 *
 * Canned(): one connection's arming, held beside its Prediction in a second dict of the same keys. arm(eth,
 * answers, snd_wscale, rcv_wscale, avail, sws, adv_right, ts_offset, mss, cwnd, valid_until) takes the
 * application's table `answers` (a dict: whole request head, bytes -> a tuple whose first item is the answer's
 * bytes), or SOCKPERF (the str "sockperf": a rule instead of a table, csrc/core/kb_sockperf.h: a payload of
 * whole sockperf messages that all ask for an answer is answered, values one (answer,) per message, tallied
 * under SOCKPERF itself), or NEXT_SEND (a client's: no answer here; the arming is kept over one segment with
 * payload, which the application takes at once, and send_canned sends its next data as the answer), and
 * TcpConnection.canned_state's fields; disarm() stops it.
 *
 * rx_canned(frame, table, canned, now, ident): what rx(frame, table) does, and when the segment is a HIT whose
 * payload is whole request heads all in the connection's armed table (or SOCKPERF's messages), and their
 * answers together may leave as one segment (kb_http_may_send), the answer's frame is built here: the result is then
 * (owner, seq, ack, flags, window, tsval, tsecr, payload, values, frame), values the table's entries in
 * request order, frame the answer (IPv4 ident `ident`), and both the prediction (snd_max past the answer) and
 * the arming (disarmed: one answer per arming) have moved. Python sends the frame and reports the exchange
 * to the connection (TcpConnection.answer_hit).
 *
 * Runs (kb_http.h struct kb_http_run): arm_run(snd_mss, send_buffer, max_snd_wnd, cwnd, ssthresh, srtt, rttvar,
 * min_rtt, min_rto, max_rto, granularity, rtt_time, cubic, cc_mss, acc, w_max, k, epoch, w_est) after arm() lets
 * rx_canned keep the exchanges it answers (TcpConnection.canned_run's fields): then its result is the answer's
 * frame alone (bytes), the arming stays (moved as kb_http_run_step moves it), and take_run() returns what the
 * kept exchanges did, for TcpConnection.canned_run_taken, or None; `owed` says whether there is any.
 * rx_canned's optional sixth argument, a dict, counts every canned answer by its table value (value -> count:
 * the application's tally); `answered_at` is the time of the connection's last one.
 *
 * A NEXT_SEND exchange is never kept: its answer is the application's next send, which only Python has, so
 * send_canned reports it (TcpConnection.answer_hit) as a reported canned answer is.
 *
 * rx_burst: rx_canned for a burst of frames off a lane's RX ring (fastburst.h). */
#include "core/kb_http.h"
#include "core/kb_sockperf.h"

#include <math.h>

#define KB_SOCKPERF_NAME "sockperf"   /* Canned.arm's answers for sockperf's rule (kbypass._fasttcp.SOCKPERF) */
#define KB_NEXT_SEND_NAME "next send" /* ... for the application's next send (kbypass._fasttcp.NEXT_SEND) */

enum { CANNED_TABLE, CANNED_SOCKPERF, CANNED_NEXT_SEND };

typedef struct {
    PyObject_HEAD
    struct kb_http_pred h;
    struct kb_http_run r;
    PyObject *answers; /* the table (a dict), or the str SOCKPERF or NEXT_SEND */
    PyObject *answer;  /* the last kept exchange's answer: the answer in flight */
    double answered_at;
    int kind;    /* CANNED_*: from answers */
    int pending; /* NEXT_SEND: a segment with payload came, the application has it (its ACK fields:) */
    uint32_t hit_ack, hit_len;
    uint16_t hit_window;
} Canned;

static int Canned_traverse(Canned *self, visitproc visit, void *arg) {
    Py_VISIT(self->answers);
    return 0;
}

static int Canned_clear(Canned *self) {
    Py_CLEAR(self->answers);
    Py_CLEAR(self->answer);
    return 0;
}

static void Canned_dealloc(Canned *self) {
    PyObject_GC_UnTrack(self);
    Canned_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* mss, cwnd, valid_until: the fields an answered exchange moves (TcpConnection.canned_refresh's) */
static int canned_moving(Canned *self, PyObject *const *args) {
    unsigned long mss = PyLong_AsUnsignedLongMask(args[0]), cwnd = PyLong_AsUnsignedLongMask(args[1]);
    double until = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred()) return -1;
    self->h.mss = (uint32_t)mss;
    self->h.cwnd = cwnd > 0xFFFFFFFFul ? 0xFFFFFFFFu : (uint32_t)cwnd;
    self->h.valid_until = until;
    return 0;
}

static PyObject *Canned_arm(Canned *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "arm() takes 11 arguments: eth, answers, snd_wscale, rcv_wscale, avail, "
                                         "sws, adv_right, ts_offset, mss, cwnd, valid_until");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) != 14) {
        PyErr_SetString(PyExc_ValueError, "eth: give the 14-byte Ethernet header");
        return NULL;
    }
    int kind = CANNED_TABLE;
    if (PyUnicode_Check(args[1]) && PyUnicode_CompareWithASCIIString(args[1], KB_SOCKPERF_NAME) == 0)
        kind = CANNED_SOCKPERF;
    else if (PyUnicode_Check(args[1]) && PyUnicode_CompareWithASCIIString(args[1], KB_NEXT_SEND_NAME) == 0)
        kind = CANNED_NEXT_SEND;
    else if (!PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "answers: give a dict (request head bytes -> (answer bytes, ...)), "
                                         "SOCKPERF or NEXT_SEND");
        return NULL;
    }
    unsigned long v[6];
    for (int i = 0; i < 6; i++) {
        v[i] = PyLong_AsUnsignedLongMask(args[2 + i]);
        if (v[i] == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    }
    if (self->r.n) {
        PyErr_SetString(PyExc_RuntimeError, "arm(): take_run() first (kept exchanges not taken)");
        return NULL;
    }
    if (canned_moving(self, args + 8) < 0) return NULL;
    self->r.armed = 0; /* arm_run keeps exchanges again */
    struct kb_http_pred *h = &self->h;
    memcpy(h->eth, PyBytes_AS_STRING(args[0]), 14);
    h->snd_wscale = (uint8_t)(v[0] > 14 ? 14 : v[0]);
    h->rcv_wscale = (uint8_t)(v[1] > 14 ? 14 : v[1]);
    h->avail = v[2] > 0x7FFFFFFFul ? 0x7FFFFFFFu : (uint32_t)v[2];
    h->sws = (uint32_t)v[3];
    h->adv_right = (uint32_t)v[4];
    h->ts_offset = (uint32_t)v[5];
    Py_INCREF(args[1]);
    Py_XSETREF(self->answers, args[1]);
    self->kind = kind;
    self->pending = 0;
    h->armed = 1;
    Py_RETURN_NONE;
}

static PyObject *Canned_arm_run(Canned *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 19 || !self->h.armed) {
        PyErr_SetString(PyExc_TypeError, "arm_run(snd_mss, send_buffer, max_snd_wnd, cwnd, ssthresh, srtt, rttvar, "
                                         "min_rtt, min_rto, max_rto, granularity, rtt_time, cubic, cc_mss, acc, w_max, "
                                         "k, epoch, w_est), after an arm()");
        return NULL;
    }
    if (self->r.n) { /* as arm(): the kept exchanges' run would be overwritten before Python took it */
        PyErr_SetString(PyExc_RuntimeError, "arm_run(): take_run() first (kept exchanges not taken)");
        return NULL;
    }
    unsigned long long v[5];
    for (int i = 0; i < 5; i++) {
        v[i] = PyLong_AsUnsignedLongLongMask(args[i]);
        if (v[i] == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    }
    double d[7];
    for (int i = 0; i < 7; i++) {
        d[i] = PyFloat_AsDouble(args[5 + i]);
        if (d[i] == -1.0 && PyErr_Occurred()) return NULL;
    }
    int cubic = PyObject_IsTrue(args[12]);
    unsigned long cc_mss = PyLong_AsUnsignedLongMask(args[13]);
    long long acc = PyLong_AsLongLong(args[14]);
    double w_max = PyFloat_AsDouble(args[15]), k = PyFloat_AsDouble(args[16]);
    double epoch = args[17] == Py_None ? NAN : PyFloat_AsDouble(args[17]), w_est = PyFloat_AsDouble(args[18]);
    if (cubic < 0 || PyErr_Occurred()) return NULL;
    struct kb_http_run *r = &self->r;
    r->snd_mss = (uint32_t)v[0];
    r->send_buffer = v[1] > 0xFFFFFFFFull ? 0xFFFFFFFFu : (uint32_t)v[1];
    r->max_snd_wnd = (uint32_t)v[2];
    r->cwnd = v[3];
    r->ssthresh = v[4];
    r->srtt = d[0];
    r->rttvar = d[1];
    r->min_rtt = d[2];
    r->min_rto = d[3];
    r->max_rto = d[4];
    r->granularity = d[5];
    r->rtt_time = d[6];
    r->cubic = (uint8_t)cubic;
    r->cc_mss = (uint32_t)cc_mss;
    r->acc = acc;
    r->w_max = w_max;
    r->k = k;
    r->epoch = epoch;
    r->w_est = w_est;
    r->armed = 1;
    Py_RETURN_NONE;
}

static PyObject *Canned_take_run(Canned *self, PyObject *unused) {
    struct kb_http_run *r = &self->r;
    if (!r->n) Py_RETURN_NONE;
    if (!self->answer) {
        PyErr_SetString(PyExc_RuntimeError, "take_run(): the kept answer is gone");
        return NULL;
    }
    PyObject *epoch = isnan(r->epoch) ? Py_None : PyFloat_FromDouble(r->epoch);
    if (!epoch) return NULL;
    if (epoch == Py_None) Py_INCREF(epoch);
    PyObject *out = Py_BuildValue("(kKKkidddddKkkkOLdddN)", (unsigned long)r->n, (unsigned long long)r->bytes_in,
                                  (unsigned long long)r->bytes_out, (unsigned long)r->seq,
                                  (int)r->window, r->now, r->srtt, r->rttvar, r->min_rtt, r->latest,
                                  (unsigned long long)r->cwnd, (unsigned long)r->max_snd_wnd,
                                  (unsigned long)r->ts_recent, (unsigned long)r->adv_right, self->answer,
                                  (long long)r->acc, r->w_max, r->k, r->w_est, epoch);
    if (!out) return NULL;
    r->n = 0;
    r->bytes_in = r->bytes_out = 0;
    return out;
}

static PyObject *Canned_get_owed(Canned *self, void *c) { return PyBool_FromLong(self->r.n != 0); }

static PyObject *Canned_get_answered_at(Canned *self, void *c) { return PyFloat_FromDouble(self->answered_at); }

static PyObject *Canned_state(Canned *self, PyObject *unused) {
    const struct kb_http_pred *h = &self->h;
    return Py_BuildValue("(iikkkkkkd)", (int)h->snd_wscale, (int)h->rcv_wscale, (unsigned long)h->avail,
                         (unsigned long)h->sws, (unsigned long)h->adv_right, (unsigned long)h->ts_offset,
                         (unsigned long)h->mss, (unsigned long)h->cwnd, h->valid_until);
}

static PyObject *Canned_disarm(Canned *self, PyObject *unused) {
    self->h.armed = 0;
    self->pending = 0;
    Py_RETURN_NONE;
}

static PyObject *Canned_get_armed(Canned *self, void *c) { return PyBool_FromLong(self->h.armed); }

static PyMethodDef Canned_methods[] = {
    {"arm", (PyCFunction)(void (*)(void))Canned_arm, METH_FASTCALL, "answer from `answers` (see csrc/fasthttp.h)"},
    {"arm_run", (PyCFunction)(void (*)(void))Canned_arm_run, METH_FASTCALL, "keep the exchanges answered (see above)"},
    {"take_run", (PyCFunction)Canned_take_run, METH_NOARGS, "what the kept exchanges did, or None"},
    {"disarm", (PyCFunction)Canned_disarm, METH_NOARGS, "answer nothing until the next arm"},
    {"state", (PyCFunction)Canned_state, METH_NOARGS, "the armed fields after eth and answers, in arm()'s order"},
    {NULL}};

static PyGetSetDef Canned_getset[] = {{"armed", (getter)Canned_get_armed, NULL, "whether rx_canned may answer", NULL},
                                      {"owed", (getter)Canned_get_owed, NULL, "kept exchanges not taken", NULL},
                                      {"answered_at", (getter)Canned_get_answered_at, NULL, "the last answer's time",
                                       NULL},
                                      {NULL}};

static PyTypeObject CannedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kbypass._fasttcp.Canned",
    .tp_basicsize = sizeof(Canned),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Canned(): one connection's canned answers (see csrc/fasthttp.h)",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)Canned_dealloc,
    .tp_traverse = (traverseproc)Canned_traverse,
    .tp_clear = (inquiry)Canned_clear,
    .tp_methods = Canned_methods,
    .tp_getset = Canned_getset,
};

#define KB_HTTP_MAX_HEADS 16

/* The answers to payload's heads (new references in vals, their bytes' total length in *total) when every one
 * is in answers: the count; 0 when any is not (nothing kept). */
static int canned_match(PyObject *answers, const uint8_t *p, size_t n, PyObject **vals, size_t *total) {
    int k = 0;
    *total = 0;
    while (n) {
        size_t h = kb_http_head_len(p, n);
        if (!h || k == KB_HTTP_MAX_HEADS) goto miss;
        PyObject *key = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)h);
        if (!key) goto miss;
        PyObject *v = PyDict_GetItemWithError(answers, key); /* borrowed */
        Py_DECREF(key);
        if (!v || !PyTuple_Check(v) || PyTuple_GET_SIZE(v) < 1 || !PyBytes_Check(PyTuple_GET_ITEM(v, 0))) goto miss;
        Py_INCREF(v);
        vals[k++] = v;
        *total += (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(v, 0));
        p += h;
        n -= h;
    }
    return k;
miss:
    PyErr_Clear(); /* a lookup error is a miss: the slow path sees the same bytes */
    while (k) Py_DECREF(vals[--k]);
    return 0;
}

/* tally[key] += count; -1 on an error (set). */
static int tally_add(PyObject *tally, PyObject *key, long count) {
    PyObject *n = PyDict_GetItemWithError(tally, key); /* borrowed */
    if (!n && PyErr_Occurred()) return -1;
    long was = n ? PyLong_AsLong(n) : 0;
    if (was == -1 && PyErr_Occurred()) return -1;
    PyObject *now = PyLong_FromLong(was + count);
    if (!now || PyDict_SetItem(tally, key, now) < 0) {
        Py_XDECREF(now);
        return -1;
    }
    Py_DECREF(now);
    return 0;
}

/* Count each answer in tally (value -> count); -1 on an error (set). */
static int canned_tally(PyObject *tally, PyObject *const *vals, int k) {
    for (int i = 0; i < k; i++)
        if (tally_add(tally, vals[i], 1) < 0) return -1;
    return 0;
}

/* The connection moves on: our answer (total bytes) to the request (req_len) is sent. */
static void canned_sent(Pred *pred, Canned *c, const struct kb_tcp_pred *adv, uint32_t req_len, size_t total,
                        double now) {
    pred->p = *adv;
    pred->p.snd_max = adv->snd_max + (uint32_t)total;
    pred->p.rcv_wnd = adv->rcv_wnd + req_len; /* the application took the request at once */
    pred->p.last_ack_sent = adv->rcv_nxt;     /* the answer acknowledges it */
    c->answered_at = now;
    c->pending = 0;
}

/* Our answer's headers around its body (total bytes, in place in w): the segment the reference sends after
 * taking the request, the prediction adv past it. Moves adv_right (the window field). */
static void canned_frame(Canned *c, const struct kb_tcp_pred *p, uint8_t *w, size_t total, double now,
                         unsigned ident) {
    struct kb_tcp_fields h = {.eth = c->h.eth, .src_ip = p->local_ip, .dst_ip = p->remote_ip,
                              .ident = (uint16_t)ident, .sport = p->local_port, .dport = p->remote_port,
                              .seq = p->snd_max, .ack = p->rcv_nxt, .flags = KB_TCP_ACK | KB_TCP_PSH,
                              .has_ts = p->ts_ok};
    h.window = kb_http_wnd_field(&c->h, p->rcv_nxt);
    h.tsval = (uint32_t)((uint64_t)(int64_t)(now * 1000) + c->h.ts_offset); /* Output._tsval */
    h.tsecr = p->ts_recent;
    kb_tcp_frame(w, &h, w + kb_tcp_frame_len(p->ts_ok, 0), total); /* the payload is in place already */
}

#define KB_SOCKPERF_MAX 64 /* messages answered in one segment: more is the Python way */

/* Answer a HIT from the canned table (or SOCKPERF's rule): NULL (not answered, no error set), the reported
 * 10-tuple, or, when the run keeps the exchange, Py_Ellipsis with the frame written to out (*out_len bytes) when
 * out is given, else the frame as bytes. una: the prediction's snd_una before the segment (adv has it after). */
static PyObject *canned_answer(Pred *pred, Canned *c, const struct kb_tcp_pred *adv, const struct kb_tcp_hit *hit,
                               const uint8_t *f, double now, unsigned ident, uint32_t una, PyObject *tally,
                               uint8_t *out_buf, size_t *out_len) {
    PyObject *vals[KB_HTTP_MAX_HEADS];
    uint32_t lens[KB_SOCKPERF_MAX];
    const uint8_t *req = f + hit->payload_off;
    size_t total = hit->payload_len; /* SOCKPERF: each answer as long as its message */
    int k, nvals = 0;                /* vals held (the table's entries) */
    /* held: a lookup may run a key's __eq__ or __hash__, and that may arm c again (dropping the table) */
    PyObject *answers = c->answers;
    Py_XINCREF(answers);
    if (c->kind == CANNED_SOCKPERF)
        k = kb_sockperf_messages(req, hit->payload_len, lens, KB_SOCKPERF_MAX);
    else
        k = nvals = canned_match(answers, req, hit->payload_len, vals, &total);
    if (!k) {
        Py_XDECREF(answers);
        return NULL;
    }
    PyObject *out = NULL, *frame = NULL, *values = NULL, *payload = NULL, *answer = NULL;
    if (!kb_http_may_send(&c->h, adv->snd_max, hit->ack, hit->window, total, now)) goto done;
    int keep = kb_http_run_ok(&c->r, una, adv->snd_max, hit->ack);
    size_t n = kb_tcp_frame_len(adv->ts_ok, total);
    uint8_t *w = out_buf;
    if (!keep || !w) {
        frame = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        if (!frame) goto done;
        w = (uint8_t *)PyBytes_AS_STRING(frame);
    }
    if (tally && (nvals ? canned_tally(tally, vals, nvals) : tally_add(tally, answers, k)) < 0) goto done;
    uint8_t *body = w + kb_tcp_frame_len(adv->ts_ok, 0);
    if (c->kind == CANNED_SOCKPERF) /* the answers straight into the frame */
        kb_sockperf_answer(body, req, lens, k);
    for (int i = 0; i < nvals; i++) { /* the answers in request order, straight into the frame */
        PyObject *b = PyTuple_GET_ITEM(vals[i], 0);
        memcpy(body, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
        body += PyBytes_GET_SIZE(b);
    }
    body = w + kb_tcp_frame_len(adv->ts_ok, 0);
    if (keep) { /* the answer in flight, for the connection's send queue when it takes the run */
        answer = nvals == 1 ? PyTuple_GET_ITEM(vals[0], 0) : NULL;
        if (answer) Py_INCREF(answer);
        else answer = PyBytes_FromStringAndSize((const char *)body, (Py_ssize_t)total);
        if (!answer) goto done;
    }
    struct kb_http_pred before = c->h; /* the window field moves adv_right: undone if Python gets nothing */
    canned_frame(c, adv, w, total, now, ident);
    if (keep) {
        out = frame ? frame : Py_Ellipsis;
        Py_INCREF(out);
        if (!frame) *out_len = n;
    } else {
        values = PyTuple_New(k);
        payload = PyBytes_FromStringAndSize((const char *)req, hit->payload_len);
        if (!values || !payload) {
            c->h = before;
            goto done;
        }
        for (int i = 0; i < nvals; i++) {
            PyTuple_SET_ITEM(values, i, vals[i]);
            vals[i] = NULL;
        }
        for (int i = 0; i < k && !nvals; i++) { /* SOCKPERF: (answer,) per message, as a table's values */
            PyObject *v = Py_BuildValue("(y#)", (const char *)body, (Py_ssize_t)lens[i]);
            if (!v) {
                c->h = before;
                goto done;
            }
            PyTuple_SET_ITEM(values, i, v);
            body += lens[i];
        }
        PyObject *owner = pred->owner ? pred->owner : Py_None;
        if (hit->has_ts)
            out = Py_BuildValue("(OkkiikkOOO)", owner, (unsigned long)hit->seq, (unsigned long)hit->ack,
                                (int)hit->flags, (int)hit->window, (unsigned long)hit->tsval,
                                (unsigned long)hit->tsecr, payload, values, frame);
        else
            out = Py_BuildValue("(OkkiiOOOOO)", owner, (unsigned long)hit->seq, (unsigned long)hit->ack,
                                (int)hit->flags, (int)hit->window, Py_None, Py_None, payload, values, frame);
        if (!out) c->h = before;
    }
    if (out) { /* the connection moves on: our answer is sent */
        canned_sent(pred, c, adv, hit->payload_len, total, now);
        if (keep) { /* C keeps the exchange (kb_http_run_step) and stays armed */
            kb_http_run_step(&c->r, &c->h, hit->ack - una, hit->seq, hit->window, hit->payload_len, (uint32_t)total,
                             adv->ts_recent, now);
            Py_XSETREF(c->answer, answer);
            answer = NULL;
        } else { /* reported: one answer per arming, and the run's copy of the connection is Python's again */
            c->h.armed = 0;
            c->r.armed = 0;
        }
    }
done:
    Py_XDECREF(answers);
    for (int i = 0; i < nvals; i++) Py_XDECREF(vals[i]);
    Py_XDECREF(frame);
    Py_XDECREF(values);
    Py_XDECREF(payload);
    Py_XDECREF(answer);
    if (!out) PyErr_Clear();
    return out;
}

/* One frame through the prediction and the canned answers: Py_None (no HIT: the slow path), a HIT's 8-tuple,
 * a reported answer's 10-tuple, or a kept answer (canned_answer's Py_Ellipsis or frame); NULL on an error. */
static PyObject *rx_one(const uint8_t *f, size_t len, PyObject *table, PyObject *canned, double now, unsigned ident,
                        PyObject *tally, uint8_t *out_buf, size_t *out_len) {
    uint8_t ip[4];
    uint16_t sport, dport;
    if (kb_tcp_key(f, len, ip, &sport, &dport) != 0) Py_RETURN_NONE;
    unsigned long long key = ((unsigned long long)((uint32_t)ip[0] << 24 | (uint32_t)ip[1] << 16 |
                                                   (uint32_t)ip[2] << 8 | ip[3]) << 32) |
                             ((unsigned long long)sport << 16) | dport;
    PyObject *kobj = PyLong_FromUnsignedLongLong(key);
    if (!kobj) return NULL;
    PyObject *pred = PyDict_GetItemWithError(table, kobj); /* borrowed */
    PyObject *can = pred ? PyDict_GetItemWithError(canned, kobj) : NULL;
    Py_DECREF(kobj);
    if (PyErr_Occurred()) return NULL;
    if (!pred || Py_TYPE(pred) != &PredType) Py_RETURN_NONE;
    /* held, not borrowed: building the answer's objects may run the collector, and a finalizer there could
     * drop the socket and with it these */
    Py_INCREF(pred);
    Py_XINCREF(can);
    Pred *pr = (Pred *)pred;
    int armed = can && Py_TYPE(can) == &CannedType && ((Canned *)can)->h.armed;
    struct kb_tcp_pred adv = pr->p; /* advanced on a copy: a canned answer moves it further */
    struct kb_tcp_hit hit;
    PyObject *out = NULL;
    if (kb_tcp_predict(&adv, f, len, &hit) == KB_TCP_HIT) {
        Canned *c = (Canned *)can;
        if (armed && hit.payload_len && c->kind == CANNED_NEXT_SEND && !c->pending) {
            /* the application takes it at once, its answer is what it sends next (send_canned) */
            c->pending = 1;
            c->hit_ack = hit.ack;
            c->hit_window = hit.window;
            c->hit_len = hit.payload_len;
            armed = 0; /* kept over it */
        } else if (armed && hit.payload_len && c->kind != CANNED_NEXT_SEND)
            out = canned_answer(pr, c, &adv, &hit, f, now, ident, pr->p.snd_una, tally, out_buf, out_len);
        if (!out) {
            /* the segment goes to Python, which the arming no longer describes (unread data, an ACK that moved
             * the send side): a later segment of this burst must not be answered before it, nor be taken as a
             * request of its own; the flush after the burst re-arms */
            if (armed) {
                c->h.armed = c->r.armed = 0;
                c->pending = 0;
            }
            pr->p = adv;
            out = hit_tuple(pr->owner, &hit, (const char *)f);
        }
    } else {
        /* a burst (out_buf): Python takes this segment only after the burst, so a later segment of the same
         * connection must not be predicted or answered against the state before it (a RST, a FIN, data out of
         * order: the Python loop would have seen it first); the slow path's segment() arms again */
        if (out_buf && pr->p.armed) {
            pr->p.armed = 0;
            if (armed) {
                Canned *c = (Canned *)can;
                c->h.armed = c->r.armed = 0;
                c->pending = 0;
            }
        }
        out = Py_None;
        Py_INCREF(out);
    }
    Py_XDECREF(can);
    Py_DECREF(pred);
    return out;
}

static int tally_arg(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t at, PyObject **tally) {
    *tally = nargs > at && args[at] != Py_None ? args[at] : NULL;
    return *tally && !PyDict_Check(*tally) ? -1 : 0;
}

static PyObject *mod_rx_canned(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *tally;
    if (nargs < 5 || nargs > 6 || !PyDict_Check(args[1]) || !PyDict_Check(args[2]) || tally_arg(args, nargs, 5, &tally)) {
        PyErr_SetString(PyExc_TypeError, "rx_canned(frame, table, canned, now, ident[, tally]): a frame, two dicts "
                                         "of predictions, the time, an IPv4 ident and a dict or None");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[3]);
    unsigned long ident = PyLong_AsUnsignedLongMask(args[4]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *out = rx_one(b.buf, (size_t)b.len, args[1], args[2], now, (unsigned)ident, tally, NULL, NULL);
    PyBuffer_Release(&b);
    return out;
}

/* send_canned(prediction, canned, data, now, ident) -> the frame of data sent as the answer to the segment
 * rx_canned kept the NEXT_SEND arming over (its payload taken by the application at once), or None when the
 * arming does not hold (nothing pending, or kb_http_may_send says no): then nothing moved. When a frame is
 * returned, the prediction is past the exchange and the arming spent, as after a reported canned answer;
 * Python sends the frame and tells the connection (TcpConnection.answer_hit with the kept segment's fields). */
static PyObject *mod_send_canned(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || Py_TYPE(args[0]) != &PredType || Py_TYPE(args[1]) != &CannedType) {
        PyErr_SetString(PyExc_TypeError, "send_canned(prediction, canned, data, now, ident)");
        return NULL;
    }
    Pred *pred = (Pred *)args[0];
    Canned *c = (Canned *)args[1];
    double now = PyFloat_AsDouble(args[3]);
    unsigned long ident = PyLong_AsUnsignedLongMask(args[4]);
    if (PyErr_Occurred()) return NULL;
    if (!c->h.armed || !c->pending || c->kind != CANNED_NEXT_SEND) Py_RETURN_NONE;
    Py_buffer d;
    if (PyObject_GetBuffer(args[2], &d, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *frame = Py_None;
    struct kb_tcp_pred adv = pred->p; /* already past the kept segment (rx_canned) */
    if (kb_http_may_send(&c->h, adv.snd_max, c->hit_ack, c->hit_window, (size_t)d.len, now)) {
        frame = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)kb_tcp_frame_len(adv.ts_ok, (size_t)d.len));
        if (frame) {
            uint8_t *w = (uint8_t *)PyBytes_AS_STRING(frame);
            memcpy(w + kb_tcp_frame_len(adv.ts_ok, 0), d.buf, (size_t)d.len);
            canned_frame(c, &adv, w, (size_t)d.len, now, (unsigned)ident);
            canned_sent(pred, c, &adv, c->hit_len, (size_t)d.len, now);
            c->h.armed = c->r.armed = 0; /* one answer per arming: reported (answer_hit) */
        }
    } else
        Py_INCREF(frame);
    PyBuffer_Release(&d);
    return frame;
}
