"""Run in host a by test_sockapi's floor test: send four frames at the floor program in b (a plain
payload, a sockperf question, a sockperf warm-up that asks for no answer, another port), and print as JSON
what was sent and every answer heard, with its addresses, ports, payload and whether its UDP checksum holds."""

import json
import sys
import time

from scapy.all import IP, UDP, AsyncSniffer, Ether, Raw, conf, sendp

conf.verb = 0
iface, src_mac, dst_mac, src, dst, port = sys.argv[1:7]
port = int(port)
def sockperf(seq, flags, size=64):
    return seq.to_bytes(8, "big") + flags.to_bytes(2, "big") + size.to_bytes(4, "big") + bytes(range(size - 14))
cases = {
    "plain": (5001, port, b"hello floor, payload intact \x00\xff" * 3),
    "sockperf": (5002, port, sockperf(7, 3)),
    "warmup": (5003, port, sockperf(8, 1 | 4)),
    "other_port": (5004, port + 1, b"not for the floor"),
}
sn = AsyncSniffer(iface=iface, lfilter=lambda x: x.haslayer(UDP) and x[IP].dst == src and x[UDP].dport in (5001, 5002, 5003, 5004))
sn.start(); time.sleep(0.5)
for sport, dport, payload in cases.values():
    sendp(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload), iface=iface)
time.sleep(1.0)
got = {}
for p in sn.stop():
    u = p[UDP]
    raw = bytes(u.payload)
    chk = u.chksum
    u2 = p[IP].copy(); del u2[UDP].chksum
    good = IP(bytes(u2))[UDP].chksum == chk
    got[str(u.dport)] = {"eth": [p.src, p.dst], "ip": [p[IP].src, p[IP].dst], "ports": [u.sport, u.dport],
                         "payload": raw.hex(), "checksum_ok": good}
print(json.dumps({"sent": {k: v[2].hex() for k, v in cases.items()}, "got": got}))
