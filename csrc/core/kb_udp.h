/* kb_udp.h: plain UDP over IPv4 over Ethernet, one frame at a time (the UDP endpoint's lane). The Python
 * references are kbypass.proto.udp: PlainUdp.accept (the check) and UdpFlow.frame (the frame). */
#ifndef KB_UDP_H
#define KB_UDP_H

#include <stdint.h>

#define KB_UDP_HLEN 42 /* Ethernet 14 + IPv4 without options 20 + UDP 8 */
#define KB_UDP_MAX_PAYLOAD (0xFFFF - 28)

/* Who "us" is: the frames a lane accepts are to this MAC, address and port. */
struct kb_udp_local {
    uint8_t mac[6];
    uint8_t ip[4];
    uint8_t bcast[4]; /* the subnet's broadcast address, never a valid source */
    int has_bcast;
    uint16_t port;
};

/* Is frame f (n bytes) one plain valid UDP datagram to us? Unicast source MAC, IPv4 without options, not
 * a fragment, TTL > 0, lengths that agree with each other and fit the frame, a source that is not 0/8,
 * loopback, multicast, broadcast or ourselves, a right IP checksum and a right (or absent) UDP one.
 * Anything else is the slow path's to answer or count. */
int kb_udp_accept(const struct kb_udp_local *me, const uint8_t *f, uint32_t n);

/* What kb_udp_accept took: the payload from f + KB_UDP_HLEN, its length, the source address and port. */
static inline uint32_t kb_udp_payload_len(const uint8_t *f) { return (uint32_t)((f[38] << 8) | f[39]) - 8; }
static inline const uint8_t *kb_udp_src_ip(const uint8_t *f) { return f + 26; }
static inline uint16_t kb_udp_src_port(const uint8_t *f) { return (uint16_t)((f[34] << 8) | f[35]); }

/* Is frame f (n bytes) a plain UDP datagram from the peer to us (PeerUdp.accept)? IPv4 without options,
 * not a fragment, lengths that agree and fit the frame, bytes 26..37 (addresses and ports) equal to key:
 * the payload (*plen bytes), else NULL. No checksum and no MAC is checked: the transport's CRC32 covers
 * its datagrams. */
const uint8_t *kb_udp_from_peer(const uint8_t *f, uint32_t n, const uint8_t key[12], uint32_t *plen);

/* Complete a frame made of a flow's 42-byte header template and plen bytes of payload after it
 * (UdpFlow.frame): the IPv4 total length, ident and header checksum, the UDP length and, with
 * udp_checksum, the UDP checksum (0xFFFF for a zero sum: zero means "no checksum" in UDP over IPv4, which
 * is what it is left at without). plen <= KB_UDP_MAX_PAYLOAD. */
void kb_udp_finish(uint8_t *f, uint32_t plen, uint16_t ident, int udp_checksum);
/* kb_udp_finish for a header h (42 bytes) kept apart from its payload (a frame chain sends them in pieces). */
void kb_udp_finish_split(uint8_t *h, const uint8_t *payload, uint32_t plen, uint16_t ident, int udp_checksum);

#endif
