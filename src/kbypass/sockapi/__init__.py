"""The Python socket API over the bypass, without preloading: `kbypass.socket` (udp.py: the socket
class; plan.py: which sockets are accelerated, and where each datagram leaves) and `kbypass.aio`
(aio.py: asyncio's create_datagram_endpoint on kbypass)."""
