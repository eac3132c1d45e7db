"""BPF objects built from bpf/*.bpf.c (into bpf/obj/) and the ctypes boundary to libbpf that loads them."""

from kbypass.bpf.libbpf import BpfCallError, BpfMap, BpfObject, XdpInfo, XdpLink, object_path, version, xdp_query

__all__ = ["BpfCallError", "BpfMap", "BpfObject", "XdpInfo", "XdpLink", "object_path", "version", "xdp_query"]
