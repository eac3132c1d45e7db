"""Ports: one API (receive/transmit/free/alloc/stats) over the AF_XDP bypass and its fallbacks."""

from .base import Port
from .batch import Batch

__all__ = ["Batch", "Port", "AfXdpPort"]


def __getattr__(name):
    # Lazy so that importing kbypass.port does not set up AF_XDP machinery until asked.
    if name == "AfXdpPort":
        from .afxdp import AfXdpPort

        return AfXdpPort
    raise AttributeError(name)
