"""AF_XDP from Python: uapi constants, the ring protocol, UMEM bookkeeping and the socket."""


__all__ = ["ConsumerRing", "ProducerRing", "Ring", "Umem", "XskSocket"]


def __getattr__(name):
    # Lazy: the rings and UMEM need numpy, and a submodule (consts, multibuf) is imported alone by code that
    # must stay cheap to load (the CLI's option parsing).
    if name in ("ConsumerRing", "ProducerRing", "Ring"):
        from . import ring
        return getattr(ring, name)
    if name == "Umem":
        from .umem import Umem
        return Umem
    if name == "XskSocket":
        from .socket import XskSocket

        return XskSocket
    raise AttributeError(name)
