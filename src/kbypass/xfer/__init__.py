"""kbypass xfer: the reliable transport (kbypass.proto.transport) on real ports.

`TransportEndpoint` (endpoint.py) drives a Connection/Listener over any Port backend; `UdpEncap` and
`EthEncap` (encap.py) put its datagrams in IPv4/UDP or raw Ethernet (EtherType 0x88B5) frames.
"""

from .encap import ETHERTYPE, EthEncap, UdpEncap
from .endpoint import ENCAPS, TransferError, TransferTimeout, TransportEndpoint, resolve_mac

__all__ = ["ENCAPS", "ETHERTYPE", "EthEncap", "TransferError", "TransferTimeout", "TransportEndpoint", "UdpEncap", "resolve_mac"]
