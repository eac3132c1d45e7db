"""Run in host a by test_xdp_tcp_floor: a kernel TCP client speaking sockperf's framing to the XDP TCP
floor, with a sniffer on the interface. Prints JSON: the answers, and per segment from the server its
TCP timestamps (TSval, TSecr) beside the TSval of the client segment it answered."""

import json
import socket
import struct
import sys
import time

from scapy.all import TCP, AsyncSniffer

iface, dst, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
HEADER = struct.Struct("!QHI")
sniffer = AsyncSniffer(iface=iface, filter=f"tcp port {port}", store=True)
sniffer.start()
time.sleep(0.5)
s = socket.create_connection((dst, port), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
answers, sent = [], []
for i in range(n):
    size = 64 + (i % 3)  # odd and even lengths: the checksum's last byte
    flags = 1 | 2 if i != 3 else 1 | 2 | 4  # message 3 is a warm-up message: ACKed, not answered
    msg = HEADER.pack(i, flags, size) + bytes([i & 0xff]) * (size - HEADER.size)
    s.sendall(msg)
    sent.append(msg.hex())
    if flags & 4:
        answers.append(None)
        continue
    got = b""
    while len(got) < size:
        chunk = s.recv(size - len(got))
        if not chunk:
            raise SystemExit("the server closed")
        got += chunk
    answers.append(got.hex())
s.close()  # FIN: the program turns it into an RST to the kernel; our retransmitted FIN is reset
time.sleep(2.0)
sniffer.stop()
segs = []
for p in sniffer.results:
    if TCP not in p:
        continue
    t = p[TCP]
    ts = dict(t.options).get("Timestamp")
    segs.append({"from_client": t.dport == port, "flags": str(t.flags), "seq": t.seq, "ack": t.ack,
                 "len": len(bytes(t.payload)), "ts": list(ts) if ts else None})
print(json.dumps({"sent": sent, "answers": answers, "segments": segs}))
