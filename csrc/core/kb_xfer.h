/* kb_xfer.h: the reliable transport's per-datagram bulk work (kbypass.proto.transport is the sans-IO
 * reference and keeps every decision beyond "is this the next in-order data segment").
 *
 * Wire layouts: kbypass/proto/transport/wire.py (datagram: a 42-byte header, the payload, a CRC32
 * trailer) and kbypass/xfer/encap.py (frames: UDP over IPv4, or a bare Ethernet header).
 */
#ifndef KB_XFER_H
#define KB_XFER_H

#include <stddef.h>
#include <stdint.h>

#include "kb_descs.h"

#define KB_XFER_HEADER 42
#define KB_XFER_CRC 4
#define KB_XFER_OVERHEAD (KB_XFER_HEADER + KB_XFER_CRC)
#define KB_XFER_MAX_PAYLOAD 0xFFFF
#define KB_XFER_FLAG_ACK 0x02
#define KB_XFER_FLAG_FIN 0x04
#define KB_XFER_FLAG_MSG_END 0x20

enum kb_xfer_kind { KB_XFER_UDP = 0, KB_XFER_ETH = 1 };       /* encap.UdpEncap, encap.EthEncap */
enum kb_xfer_run_mode { KB_RUN_IN_ORDER = 0, KB_RUN_OUT_OF_ORDER = 1, KB_RUN_MESSAGES = 2 };

/* The CRC32 of zlib.crc32 (reflected IEEE 802.3), which the Python path uses. */
uint32_t kb_xfer_crc32(const uint8_t *p, size_t n);

/* CRC-64/XZ (reflected ECMA-182 polynomial, xz's and lzma's CHECK_CRC64) of n bytes at p, continuing crc
 * (0 to start; crc64(crc64(0, a), b) == crc64(0, a + b)): `kbypass xfer --digest crc64`, the stream's
 * end-to-end check at ~20 GB/s (SHA-256 with SHA-NI does ~1.2 GB/s here). */
uint64_t kb_xfer_crc64(uint64_t crc, const uint8_t *p, size_t n);

/* The header fields of a datagram without SACK blocks. */
struct kb_xfer_fields {
    uint32_t flags, src_id, dst_id;
    uint64_t seq, ack;
    uint32_t window, tsval, tsecr;
};

/* wire.encode_fields without SACK blocks: header, payload (plen <= KB_XFER_MAX_PAYLOAD), CRC32 into out
 * (KB_XFER_OVERHEAD + plen bytes). */
void kb_xfer_encode(uint8_t *out, const struct kb_xfer_fields *h, const uint8_t *payload, uint32_t plen);

/* The flags of a data segment's datagram (Connection._emit): ACK, and MSG_END / FIN by the segment's. */
static inline uint32_t kb_xfer_segment_flags(int msg_end, int fin) {
    return KB_XFER_FLAG_ACK | (msg_end ? KB_XFER_FLAG_MSG_END : 0) | (fin ? KB_XFER_FLAG_FIN : 0);
}

/* What rx_run accepts (Connection.rx_run_params gives the values): frames from the peer (kind, key as in
 * encap), datagrams of our connection ids, at the running seq, acking exactly ack, a window edge up to
 * right, ending by room_end, room_bytes of payload in all. */
struct kb_xfer_run {
    int kind, mode;
    const uint8_t *key;
    size_t keylen;
    uint64_t local_id, peer_id; /* u32 on the wire: a larger id matches nothing */
    uint64_t seq, ack, right, room_end, room_bytes;
};

/* Where rx_run found a payload, or the part of it in one frame of a chain: offset into the memory, length,
 * whether it is its datagram's last part (`last`) and that datagram had MSG_END set (`msg_end`, on the last
 * part only). */
struct kb_xfer_piece {
    uint64_t off;
    uint32_t len;
    uint8_t msg_end, last;
};

/* The frames of the packet whose head is frame i of d, in ring order (multi-buffer AF_XDP: XDP_PKT_CONTD in
 * the options of every frame of a packet but its last); 0 when d ends inside the packet. */
size_t kb_xfer_chain_len(const struct kb_descs *d, size_t i);

/* The frame index of packet `packet` of d (ring order, as kb_xfer_chain_len counts), or d->n if there are
 * not that many whole packets. */
size_t kb_xfer_packet_frame(const struct kb_descs *d, size_t packet);

/* The longest run of packets, from the one whose head is frame `start` of d (ring order: a packet may be a
 * chain of frames), that are each the next data segment in line (see fastxfer.c's rx_run for the full
 * conditions); returns the frame after the run, and in *packets how many packets it took. Records each
 * payload in pieces (one piece per frame a payload lies in: room for d->n - start), their number in
 * *npieces, their total length and the last timestamp (unchanged when the run is empty). A chain's headers
 * are read from its first frame (which must hold them whole, else the run ends there). Nothing in mem or d
 * changes. With dst (not NULL, room for kb_xfer_rx_bound bytes) the payloads are also copied there, joined
 * (*total bytes), each checked and copied a chunk at a time so its bytes are read from memory once; past
 * *total dst holds garbage (a datagram the CRC refused). */
size_t kb_xfer_rx_run(const uint8_t *mem, uint64_t memlen, const struct kb_descs *d, size_t start,
                      const struct kb_xfer_run *p, struct kb_xfer_piece *pieces, size_t *npieces, uint64_t *total,
                      uint32_t *tsval, size_t *packets, uint8_t *dst);

/* The most payload bytes kb_xfer_rx_run from frame `start` of d can take (and write to its dst): room_bytes
 * or the frames' bytes, whichever is less. */
uint64_t kb_xfer_rx_bound(const struct kb_descs *d, size_t start, uint64_t room_bytes);

/* The header length of a kind's frames (42 for UDP, 14 for Ethernet). */
static inline uint32_t kb_xfer_frame_header(int kind) { return kind == KB_XFER_UDP ? 42 : 14; }

/* Does a datagram of dlen bytes, framed with a kind's header, fit the frame at addr? At most max_len bytes
 * (the link's limit), inside its UMEM frame (the aligned chunk of frame_size bytes, a power of two, that
 * addr lies in: never into the next one, which may be a kernel RX buffer, whatever max_len says), inside
 * memlen bytes of memory, and no more than an IPv4 total length describes. */
int kb_xfer_frame_fits(int kind, uint64_t dlen, uint64_t max_len, uint64_t frame_size, uint64_t addr,
                       uint64_t memlen);

/* UdpEncap.frame / EthEncap.frame into f: the header (udp: a flow's 42-byte template, completed by
 * kb_udp_finish without UDP checksum, ident + 1; eth: the 14 bytes as they are) then the datagram. Returns
 * the frame's length; *ident is the ident used. */
uint32_t kb_xfer_frame_write(uint8_t *f, int kind, const uint8_t *hdr, uint32_t *ident, const uint8_t *dgram,
                             uint32_t dlen);

/* The frames (from frame i of d, each empty, at most max_frames) a datagram of dlen bytes with a kind's header
 * takes as a chain: each frame filled from its addr to the end of its UMEM frame (the aligned chunk of
 * frame_size bytes), the last one partly. 0 if it does not fit: more than max_len bytes in all, more than an
 * IPv4 total length describes, more than max_frames frames, or a frame outside memlen bytes of memory;
 * KB_XFER_NO_FRAMES if it would fit but d has too few frames from i. */
#define KB_XFER_NO_FRAMES ((size_t)-1)
size_t kb_xfer_chain_fits(int kind, uint64_t dlen, uint64_t max_len, uint64_t frame_size, size_t max_frames,
                          const struct kb_descs *d, size_t i, uint64_t memlen);

/* kb_xfer_frame_write as a chain of `frames` frames from frame i of d (kb_xfer_chain_fits said how many):
 * the header in the first, the datagram scattered over them in order, each descriptor's length set and
 * XDP_PKT_CONTD in the options of all but the last (cleared there). */
void kb_xfer_chain_write(uint8_t *mem, struct kb_descs *d, size_t i, size_t frames, uint64_t frame_size, int kind,
                         const uint8_t *hdr, uint32_t *ident, const uint8_t *dgram, uint32_t dlen);

/* kb_xfer_chain_write of the datagram kb_xfer_encode would make of h and payload (dlen = KB_XFER_OVERHEAD +
 * plen for kb_xfer_chain_fits), encoded straight into the chain: the payload is copied once, into the frames. */
void kb_xfer_chain_encode(uint8_t *mem, struct kb_descs *d, size_t i, size_t frames, uint64_t frame_size, int kind,
                          const uint8_t *hdr, uint32_t *ident, const struct kb_xfer_fields *h, const uint8_t *payload,
                          uint32_t plen);

#endif
