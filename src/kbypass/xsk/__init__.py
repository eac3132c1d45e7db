"""AF_XDP from Python: uapi constants, the ring protocol, UMEM bookkeeping and the socket."""

from .ring import ConsumerRing, ProducerRing, Ring
from .umem import Umem

__all__ = ["ConsumerRing", "ProducerRing", "Ring", "Umem", "XskSocket"]


def __getattr__(name):
    if name == "XskSocket":
        from .socket import XskSocket

        return XskSocket
    raise AttributeError(name)
