"""`from kbypass import aio`: asyncio's create_datagram_endpoint over the bypass, for asyncio and uvloop
(kbypass.sockapi.aio has the example and the details)."""

from kbypass.sockapi.aio import DatagramTransport, create_datagram_endpoint

__all__ = ["DatagramTransport", "create_datagram_endpoint"]
