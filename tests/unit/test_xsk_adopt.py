"""Adopting an AF_XDP socket made elsewhere (the control plane's open_socket), without a network: a wrong
fd is refused with a clear error and closed, never leaked; the port owns both fds from the call on. The
working path is tests/netns/test_cp.py (test_*cp_made*)."""

from __future__ import annotations

import os
import socket

import pytest

from kbypass.errors import UsageError
from kbypass.port.afxdp import AfXdpPort, socket_layout
from kbypass.xsk.socket import XskError, XskSocket
from kbypass.xsk.umem import Umem
from tests.kb import fd_closed


@pytest.mark.parametrize("make, says", [
    (lambda: os.pipe()[0], "is not a socket"),
    (lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).detach(), "is not an AF_XDP socket"),
])
def test_a_socket_to_adopt_that_is_not_af_xdp_is_refused_and_closed(make, says):
    fd = make()
    with Umem(frames=64) as umem, pytest.raises(XskError, match=says):
        XskSocket(umem, "eth0", 0, fd=fd)
    assert fd_closed(fd)


def test_busy_polling_an_adopted_socket_is_refused_and_both_fds_are_closed():
    xsk_fd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).detach()
    umem_fd = os.memfd_create("umem-test")
    os.ftruncate(umem_fd, 64 * 2048)
    with pytest.raises(UsageError, match="busy polling needs socket options only root may set"):
        AfXdpPort("eth0", 0, frames=64, poll="busy", xsk_fd=xsk_fd, umem_fd=umem_fd)
    assert fd_closed(xsk_fd) and fd_closed(umem_fd)


def test_adopting_takes_both_fds_or_neither_and_closes_what_it_was_given():
    fd = os.memfd_create("umem-test")
    with pytest.raises(UsageError, match="takes both fds"):
        AfXdpPort("eth0", 0, umem_fd=fd)
    assert fd_closed(fd)


def test_the_socket_layout_is_the_given_sizes_over_the_ports_defaults():
    assert socket_layout({"frames": 256, "rx_size": 512, "poll": "wakeup"}) == {
        "frames": 256, "frame_size": 2048, "headroom": 0, "rx_size": 512, "tx_size": 2048, "fill_size": 2048,
        "comp_size": 2048, "multi_buffer": None}  # None: chosen from the MTU when opened
