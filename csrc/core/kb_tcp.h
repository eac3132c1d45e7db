/* kb_tcp.h: the TCP fast path of kbypass's userspace TCP (kbypass.proto.tcp is the reference).
 *
 * Header prediction, after Van Jacobson's and Linux's tcp_rcv_established: for a synchronized connection
 * (any state TcpConnection.prediction arms: ESTABLISHED, FIN_WAIT_1/2, CLOSING, CLOSE_WAIT, LAST_ACK; after
 * the peer's FIN the receive window is armed as 0, so only its pure ACKs hit) the next segment is almost
 * always the one expected (in order, flags ACK or ACK|PSH, only the timestamps option, in the usual NOP NOP
 * TS layout), so one comparison per field tells whether the general receive path's checks can be skipped. A
 * duplicate ACK (ack == snd_una, no data) is such a segment too: the reference's _rx_ack, run for every
 * HIT, counts it and its loss detection acts on it, as receive() would. Unlike Linux's, the prediction does
 * not include the peer's window: the ACK processing that records it is the reference's own
 * (TcpConnection._rx_ack), run for every predicted segment, so a peer whose window moves with each segment
 * (Linux's, while its buffer autotunes) is predicted too. kb_tcp_predict takes a whole Ethernet frame and
 * says HIT (the segment is that common case, every check of the reference path passed: IPv4 header and
 * checksum, the 4-tuple, RFC 7323 PAWS, the receive window, the ACK inside [snd_una, snd_max] with both
 * ends allowed, the TCP checksum) or SLOW (anything else, handed to Python's TcpConnection.receive
 * unchanged).
 *
 * State: struct kb_tcp_pred is not a second connection. It is the prediction of the Python connection's
 * next segment, armed from the connection's fields (TcpConnection.prediction) after every Python-side
 * change (kbypass.endpoint.tcp.TcpSocket: after a flush or a slow segment; cleared before a slow segment,
 * a timer, shutdown, close or abort), and advanced by a HIT exactly as the reference advances the
 * connection for that segment (rcv_nxt, the receive window, snd_una, ts_recent), so a batch of segments of
 * one connection predicts without a trip back to Python. tests/unit/test_tcp_fastpath.py holds the two to
 * the same verdict on random segments.
 *
 * kb_tcp_frame builds the other direction: one Ethernet + IPv4 + TCP frame from the header fields, with the
 * options the established path sends (none, or NOP NOP TS), both checksums filled, byte for byte what
 * kbypass.proto.tcp.Segment.encode and kbypass.proto.ipv4.build_ipv4_header make.
 */
#ifndef KB_TCP_H
#define KB_TCP_H

#include <stddef.h>
#include <stdint.h>

#define KB_TCP_FIN 0x01
#define KB_TCP_SYN 0x02
#define KB_TCP_RST 0x04
#define KB_TCP_PSH 0x08
#define KB_TCP_ACK 0x10

struct kb_tcp_pred {
    uint8_t local_ip[4], remote_ip[4]; /* as on the wire */
    uint16_t local_port, remote_port;  /* host order */
    uint32_t rcv_nxt;                  /* wire sequence numbers (mod 2**32) */
    uint32_t snd_una, snd_max;
    uint32_t rcv_wnd;       /* bytes the connection takes beyond rcv_nxt */
    uint32_t ts_recent;     /* RFC 7323 */
    uint32_t last_ack_sent; /* the rcv_nxt our last ACK carried: ts_recent moves only for seq <= it */
    uint8_t ts_ok;          /* timestamps negotiated: every predicted segment carries them */
    uint8_t armed;          /* 0: predict nothing (Python has the connection) */
};

struct kb_tcp_hit {
    uint32_t seq, ack, tsval, tsecr;
    uint16_t window;
    uint8_t flags, has_ts;
    uint32_t payload_off, payload_len; /* offsets in the frame */
};

enum { KB_TCP_SLOW = 0, KB_TCP_HIT = 1 };

/* The 4-tuple of an IPv4 TCP frame (Ethernet first): 0 and the fields, or -1 when it is not one. */
int kb_tcp_key(const uint8_t *f, size_t n, uint8_t src_ip[4], uint16_t *sport, uint16_t *dport);

/* HIT (and the prediction advanced past the segment) or SLOW (nothing changed). */
int kb_tcp_predict(struct kb_tcp_pred *p, const uint8_t *f, size_t n, struct kb_tcp_hit *hit);

/* Header lengths of what kb_tcp_frame writes: 14 + 20 + 20 (+ 12 with timestamps). */
static inline size_t kb_tcp_frame_len(int has_ts, size_t payload) { return 54 + (has_ts ? 12 : 0) + payload; }

struct kb_tcp_fields {
    const uint8_t *eth; /* 14 bytes: destination MAC, source MAC, EtherType */
    const uint8_t *src_ip, *dst_ip;
    uint16_t ident, sport, dport, window;
    uint32_t seq, ack, tsval, tsecr;
    uint8_t flags, has_ts;
};

/* Write the frame (kb_tcp_frame_len bytes) into out; the payload is copied from payload. */
void kb_tcp_frame(uint8_t *out, const struct kb_tcp_fields *h, const uint8_t *payload, size_t len);

#endif
