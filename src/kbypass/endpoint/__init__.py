"""UdpEndpoint: a UDP socket without the kernel. Bind ip:port; the steering rule is installed for you.

    from kbypass.endpoint import UdpEndpoint

    with UdpEndpoint("kb-b", "10.77.0.2", 4321, netns="kb-b", poll="busy") as ep:
        data, (ip, port) = ep.recvfrom(timeout=1.0)
        ep.sendto(data, (ip, port))

Everything the endpoint did not ask for still passes to the kernel (ssh, ping, other ports).

- base.py    the API both backends share (UdpEndpoint, argument checks, payload_limits)
- xdp.py     XdpEndpoint, `backend="afxdp"`: AF_XDP + steering, one MessageLane per queue's port
- kernel.py  SocketEndpoint, `backend="socket"`: a kernel UDP socket, the baseline
- tcpio.py   TcpHost: kbypass's TCP (kbypass.proto.tcp, sans-IO) on one interface address over AF_XDP
- tcp.py     TcpSocket and TcpListener, the socket API over a TcpHost
Interface facts and the placeholder kernel bind are kbypass.net's; the "plain UDP to us" check and the
per-flow frame builder are proto.udp's (PlainUdp, UdpFlow).
"""

from .base import BACKENDS, POLL_MODES, UdpEndpoint, check_peer, payload_limits
from .kernel import SocketEndpoint
from .tcp import TcpListener, TcpSocket
from .tcpio import TcpHost
from .xdp import XdpEndpoint

__all__ = ["BACKENDS", "POLL_MODES", "SocketEndpoint", "TcpHost", "TcpListener", "TcpSocket", "UdpEndpoint",
           "XdpEndpoint", "check_peer", "payload_limits"]
