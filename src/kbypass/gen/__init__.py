"""Packet generators: `live` (BPF_PROG_RUN live frames, the fastest), later `afxdp` and `packet_mmap`."""
