/* kb_sockperf.h: sockperf's ping-pong answer, for canned answers on the TCP fast path (csrc/fasthttp.h's
 * rx_canned with Canned armed for SOCKPERF). kbypass.apps.pingpong.answer is the reference: a sockperf message
 * (14-byte header: u64 seq, u16 flags, u32 length = the whole message, big-endian) whose flags ask for an
 * answer (client and pong set) is answered with its own bytes, the client flag cleared.
 *
 * Why: a `sockperf ping-pong --tcp` client waits for each answer before it sends the next message, so a
 * server's whole turn is on the round trip. Through Python (the segment's receive processing, the Data event,
 * the framing, the answer's send path, a frame build) that turn is ~10 us; here the answer's frame leaves in
 * the call that took the request off the ring, and Python catches up with the connection afterwards
 * (TcpConnection.answer_hit, as for HTTP's canned answers).
 *
 * Only the common case is answered here: a payload that is one or more whole messages, every one asking for
 * an answer. Anything else (a message split over segments, one that asks for none, a length field out of
 * range) is the Python way, where the application frames the stream (kbypass.apps.tcpmsg). */
#ifndef KB_SOCKPERF_H
#define KB_SOCKPERF_H

#include <stddef.h>
#include <stdint.h>

#define KB_SOCKPERF_HEADER 14
#define KB_SOCKPERF_CLIENT 1 /* flags (low byte, offset 9): sent by a client */
#define KB_SOCKPERF_PONG 2   /* please answer */

/* The number of messages p[0..n) holds when it is 1..max whole messages each asking for an answer, their
 * lengths in lens; 0 otherwise. */
int kb_sockperf_messages(const uint8_t *p, size_t n, uint32_t *lens, int max);

/* Write the answers to the k messages of p (kb_sockperf_messages' lens) into out (as many bytes as p). */
void kb_sockperf_answer(uint8_t *out, const uint8_t *p, const uint32_t *lens, int k);

#endif
