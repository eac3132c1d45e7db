"""The uapi of linux/if_xdp.h (and the few socket options AF_XDP needs), in one place.

Values and layouts are copied as facts from the kernel headers; numpy dtypes (made on first use) describe the structs so the
same definition serves setsockopt/getsockopt packing and ring access.
"""

from __future__ import annotations

AF_XDP = 44
SOL_XDP = 283

# sockaddr_xdp.sxdp_flags
XDP_SHARED_UMEM = 1 << 0
XDP_COPY = 1 << 1
XDP_ZEROCOPY = 1 << 2
XDP_USE_NEED_WAKEUP = 1 << 3
XDP_USE_SG = 1 << 4  # Linux >= 6.6: multi-buffer, a packet may span several UMEM frames

# xdp_umem_reg.flags
XDP_UMEM_UNALIGNED_CHUNK_FLAG = 1 << 0

# xdp_desc.options: this frame is not the packet's last (multi-buffer; with XDP_USE_SG)
XDP_PKT_CONTD = 1 << 0

# flags word of every ring
XDP_RING_NEED_WAKEUP = 1 << 0

# SOL_XDP socket options
XDP_MMAP_OFFSETS = 1
XDP_RX_RING = 2
XDP_TX_RING = 3
XDP_UMEM_REG = 4
XDP_UMEM_FILL_RING = 5
XDP_UMEM_COMPLETION_RING = 6
XDP_STATISTICS = 7
XDP_OPTIONS = 8
XDP_MAX_TX_SKB_BUDGET = 9  # Linux >= 6.17: frames one sendto() may send in copy mode (default 32)

# xdp_options.flags
XDP_OPTIONS_ZEROCOPY = 1 << 0

# mmap page offsets of the four rings
XDP_PGOFF_RX_RING = 0
XDP_PGOFF_TX_RING = 0x80000000
XDP_UMEM_PGOFF_FILL_RING = 0x100000000
XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000

# The kernel reserves this much headroom in front of packet data in every XDP buffer; an RX descriptor's
# address is therefore chunk start + umem headroom + XDP_PACKET_HEADROOM.
XDP_PACKET_HEADROOM = 256

# SOL_SOCKET busy-polling options (asm-generic/socket.h; x86-64 uses the generic values)
SO_BUSY_POLL = 46
SO_PREFER_BUSY_POLL = 69
SO_BUSY_POLL_BUDGET = 70

# struct xdp_statistics; asking with this full size makes the kernel report rx_ring_full separately
# instead of folding it into rx_dropped.
XDP_STATISTICS_FIELDS = (
    "rx_dropped",
    "rx_invalid_descs",
    "tx_invalid_descs",
    "rx_ring_full",
    "rx_fill_ring_empty_descs",
    "tx_ring_empty_descs",
)

_DTYPE_NAMES = ("XDP_DESC", "UMEM_ADDR", "SOCKADDR_XDP", "XDP_UMEM_REG_T", "XDP_RING_OFFSET", "XDP_MMAP_OFFSETS_T",
                "XDP_STATISTICS_T")


def _build_dtypes() -> dict:
    """The structs as numpy dtypes, made on first use: numpy takes ~100 ms to import, and modules that only
    need this file's numbers (kbypass.xsk.multibuf, the testbed's MTU limits read while the CLI parses its
    options) must not pay for it."""
    import numpy as np

    # struct xdp_desc: the RX/TX descriptor (the fill/completion rings carry bare u64 addresses)
    XDP_DESC = np.dtype([("addr", "<u8"), ("len", "<u4"), ("options", "<u4")])
    UMEM_ADDR = np.dtype("<u8")

    # struct sockaddr_xdp
    SOCKADDR_XDP = np.dtype(
        [
            ("family", "<u2"),
            ("flags", "<u2"),
            ("ifindex", "<u4"),
            ("queue_id", "<u4"),
            ("shared_umem_fd", "<u4"),
        ]
    )

    # struct xdp_umem_reg as of Linux 6.8 (tx_metadata_len lives in what used to be tail padding, so the
    # 32-byte size is also what older kernels expect for the "v2" layout with flags).
    XDP_UMEM_REG_T = np.dtype(
        [
            ("addr", "<u8"),
            ("len", "<u8"),
            ("chunk_size", "<u4"),
            ("headroom", "<u4"),
            ("flags", "<u4"),
            ("tx_metadata_len", "<u4"),
        ]
    )

    # struct xdp_ring_offset / xdp_mmap_offsets (the layout with the flags field, Linux >= 5.4)
    XDP_RING_OFFSET = np.dtype([("producer", "<u8"), ("consumer", "<u8"), ("desc", "<u8"), ("flags", "<u8")])
    XDP_MMAP_OFFSETS_T = np.dtype(
        [("rx", XDP_RING_OFFSET), ("tx", XDP_RING_OFFSET), ("fr", XDP_RING_OFFSET), ("cr", XDP_RING_OFFSET)]
    )

    XDP_STATISTICS_T = np.dtype([(name, "<u8") for name in XDP_STATISTICS_FIELDS])

    assert SOCKADDR_XDP.itemsize == 16
    assert XDP_UMEM_REG_T.itemsize == 32
    assert XDP_MMAP_OFFSETS_T.itemsize == 128
    assert XDP_STATISTICS_T.itemsize == 48
    assert XDP_DESC.itemsize == 16
    return {name: value for name, value in locals().items() if name.isupper()}


def __getattr__(name: str):
    if name in _DTYPE_NAMES:
        globals().update(_build_dtypes())  # from now on plain module attributes
        return globals()[name]
    raise AttributeError(name)
