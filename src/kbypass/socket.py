"""`from kbypass import socket`: the stdlib socket module with UDP over the bypass.

`socket.socket(socket.AF_INET, socket.SOCK_DGRAM)` is a kbypass.sockapi.udp.socket (a subclass of the
stdlib's: see its doc for what is accelerated, the options honoured and the readiness fd); every other
name is the stdlib's own, so TCP and unix sockets made through this module are plain kernel sockets.
"""

import socket as _stdlib
from socket import *  # noqa: F401,F403 - every stdlib name passes through

from kbypass.sockapi.udp import socket  # noqa: F401,F811 - the one name we replace

__all__ = [*_stdlib.__all__]


def __getattr__(name: str):  # the stdlib's names outside its __all__ too
    return getattr(_stdlib, name)
