"""Facts about the host's network that applications need: interfaces (netlink), the kernel's neighbour
table, and the placeholder kernel socket that reserves a UDP port. Below the applications (the UDP endpoint,
the transport endpoint) and above nothing of kbypass's but `netns` and `errors`."""

from .interface import Interface, LinkInfo, bind_tcp, bind_udp, check_address, link_info

__all__ = ["Interface", "LinkInfo", "bind_tcp", "bind_udp", "check_address", "link_info"]
