"""`kbypass doctor`: check up front everything the bypass path needs, each with the fix.

Each check is a small function returning a `Check`. A failed *required* check makes the doctor exit
non-zero; a failed optional one (a benchmark peer, bpffs) is a warning. Checks look at the real machine;
tests simulate a missing piece by changing what the machine shows (PATH, the mounts file), not by mocking
the checks themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kbypass.bpf import libbpf
from kbypass.host import testbed

PROC_MOUNTS = "/proc/mounts"
PROC_STATUS = "/proc/self/status"
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"
BPF_OBJ_DIR = libbpf.OBJ_DIR  # where make setup builds bpf/*.bpf.c (one definition: kbypass.bpf.libbpf)
REQUIRED_OBJECTS = ("steer.bpf.o", "livegen.bpf.o", "pong.bpf.o", "tcppong.bpf.o", "xdp_pass.bpf.o")  # steering;
# the live generator; the latency floors (UDP: `bench latency`; TCP: bench/tcp_vs_kernel.py) and the XDP_PASS
# their client side needs on veth

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_NET_RAW = 12, 21, 13
AF_XDP = 44
# bpf(2)'s number differs per architecture (platform.machine() -> __NR_bpf); the asm-generic table (arm64,
# riscv, loongarch) has 280. An architecture not listed goes through libbpf's bpf_map_create instead.
SYS_BPF = {
    "x86_64": 321, "amd64": 321, "i386": 357, "i686": 357, "aarch64": 280, "arm64": 280, "armv7l": 386,
    "armv6l": 386, "riscv64": 280, "loongarch64": 280, "ppc64le": 361, "ppc64": 361, "s390x": 351,
}
BPF_MAP_CREATE, BPF_MAP_TYPE_ARRAY = 0, 2
NATIVE_XDP = "native XDP on testbed veth"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    required: bool
    detail: str
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _cap_eff() -> int:
    for line in Path(PROC_STATUS).read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_root() -> Check:
    # CAP_SYS_ADMIN covers CAP_BPF on kernels that split them, so these three are what we need.
    caps = _cap_eff()
    need = {"CAP_NET_ADMIN": CAP_NET_ADMIN, "CAP_SYS_ADMIN": CAP_SYS_ADMIN, "CAP_NET_RAW": CAP_NET_RAW}
    missing = [n for n, bit in need.items() if not caps >> bit & 1]
    if os.geteuid() == 0 and not missing:
        return Check("root / capabilities", True, True, "root with CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_NET_RAW")
    detail = "not root" if os.geteuid() != 0 else f"missing {', '.join(missing)}"
    return Check("root / capabilities", False, True, detail, "run kbypass as root: sudo kbypass ...")


def bpf_syscall_number(machine: str | None = None) -> int | None:
    """__NR_bpf on `machine` (default: this one), or None where kbypass does not know it."""
    return SYS_BPF.get(machine or platform.machine())


def _map_create_fd() -> tuple[int, int]:
    """(fd, errno) of a one-entry array map made through bpf(2) (libbpf's wrapper where the number is
    unknown)."""
    nr = bpf_syscall_number()
    if nr is not None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        attr = (ctypes.c_uint32 * 32)(BPF_MAP_TYPE_ARRAY, 4, 4, 1)  # map_type, key_size, value_size, entries
        fd = libc.syscall(nr, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
        return fd, ctypes.get_errno() if fd < 0 else 0
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)  # OSError when missing: the caller says so
    lib.bpf_map_create.restype = ctypes.c_int
    lib.bpf_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                   ctypes.c_uint32, ctypes.c_void_p]
    fd = lib.bpf_map_create(BPF_MAP_TYPE_ARRAY, None, 4, 4, 1, None)
    return fd, (-fd if fd < 0 else 0)


def check_bpf_syscall() -> Check:
    """Create (and close) a one-entry array map: the smallest thing that proves bpf(2) works for us."""
    try:
        fd, err = _map_create_fd()
    except (OSError, AttributeError):
        return Check("BPF syscall", False, True,
                     f"bpf(2)'s number on {platform.machine()} is unknown to kbypass and libbpf.so.1 is missing",
                     "apt-get install libbpf1   (kbypass then makes the call through libbpf)")
    if fd < 0:
        return Check("BPF syscall", False, True, f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}",
                     "run as root on a kernel with CONFIG_BPF_SYSCALL; check kernel.unprivileged_bpf_disabled")
    os.close(fd)
    return Check("BPF syscall", True, True, "bpf(2) creates maps")


def check_af_xdp() -> Check:
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as e:
        return Check("AF_XDP sockets", False, True, f"socket(AF_XDP) failed: {e.strerror}",
                     "use a kernel built with CONFIG_XDP_SOCKETS=y (Linux >= 4.18), and run as root")
    return Check("AF_XDP sockets", True, True, "socket(AF_XDP, SOCK_RAW) works")


def check_bpffs() -> Check:
    mounts = Path(PROC_MOUNTS).read_text().splitlines()
    if any(len(f := m.split()) >= 3 and f[2] == "bpf" for m in mounts):
        return Check("bpffs", True, False, "bpf filesystem mounted")
    return Check("bpffs", False, False, "no bpf filesystem mounted (needed for pinned maps)",
                 "mount -t bpf bpf /sys/fs/bpf   (make setup does this)")


def check_btf() -> Check:
    if os.path.exists(BTF_VMLINUX):
        return Check("kernel BTF", True, False, BTF_VMLINUX)
    return Check("kernel BTF", False, False, f"{BTF_VMLINUX} missing",
                 "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (only needed for CO-RE programs)")


def check_clang() -> Check:
    path = shutil.which("clang")
    if path is None:
        return Check("clang", False, True, "clang not found on PATH (builds the BPF objects)",
                     "apt-get install clang llvm   (or: make setup)")
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.splitlines()
    return Check("clang", True, True, out[0] if out else path)


def check_libbpf() -> Check:
    try:
        lib = ctypes.CDLL("libbpf.so.1")
        major, minor = lib.libbpf_major_version(), lib.libbpf_minor_version()
    except (OSError, AttributeError):
        return Check("libbpf", False, True, "libbpf.so.1 not found",
                     "apt-get install libbpf1 libbpf-dev   (or: make setup)")
    if (major, minor) < (1, 0):
        return Check("libbpf", False, True, f"libbpf {major}.{minor} is older than 1.0",
                     "install libbpf >= 1.0 (Debian 12's libbpf1 is fine)")
    return Check("libbpf", True, True, f"libbpf {major}.{minor}")


def check_bpf_objects() -> Check:
    missing = [o for o in REQUIRED_OBJECTS if not (BPF_OBJ_DIR / o).exists()]
    if missing:
        return Check("BPF objects", False, True, f"not built: {', '.join(missing)}",
                     "make setup   (builds bpf/*.bpf.c with clang)")
    return Check("BPF objects", True, True, ", ".join(REQUIRED_OBJECTS))


def check_native() -> Check:
    """kbypass's C modules: optional (pure-Python paths do the same work, slower)."""
    from kbypass import backend

    missing = backend.missing()
    if missing:
        return Check("C modules", False, False, f"not built: {', '.join(missing)} (pure-Python paths used: "
                     "about 3x the ping-pong latency, slower batch bookkeeping)", "make setup   (needs gcc, python3-dev)")
    if os.environ.get("KBYPASS_PURE_PYTHON") == "1":
        return Check("C modules", False, False, "built, but KBYPASS_PURE_PYTHON=1 switches them off",
                     "unset KBYPASS_PURE_PYTHON")
    return Check("C modules", True, False, ", ".join(backend.MODULES.values()))


def check_native_xdp(prefix: str | None = None, require_testbed: bool = False) -> Check:
    """Attach the steering program natively on host b's veth for a moment, then detach. Without the
    testbed the check is not tried: a warning, or with `require_testbed` (the demo, which has just brought
    it up) a failure."""
    prefix = prefix or testbed.default_prefix()
    hosts = testbed.status(prefix)
    if hosts is None:
        flag = "" if prefix == testbed.DEFAULT_PREFIX else f" --prefix {prefix}"
        return Check(NATIVE_XDP, False, require_testbed, f"testbed {prefix!r} is not up; not tried",
                     f"kbypass testbed up{flag}   (then run kbypass doctor{flag} again)")
    b = hosts[1]
    try:
        from kbypass.steer.steering import Steering

        with Steering(b.iface, netns=b.netns, mode="native"):  # entering attaches, leaving detaches
            pass
    except Exception as e:  # any failure here is the finding itself
        if b.mtu > testbed.XDP_MAX_MTU:
            # kbypass's program is frags-aware, so the kernel took it above one page's MTU unless its veth
            # has no multi-buffer XDP (older kernels): then the MTU is what to change.
            flag = "" if prefix == testbed.DEFAULT_PREFIX else f" --prefix {prefix}"
            return Check(NATIVE_XDP, False, True,
                         f"attach on {b.iface} failed at MTU {b.mtu} ({e}): this kernel's veth may lack multi-buffer "
                         f"XDP; without it {testbed.XDP_MTU_WHY}",
                         f"kbypass testbed up{flag} --mtu {testbed.XDP_MAX_MTU} (or less; the default is 1500), "
                         "or a kernel with multi-buffer XDP on veth (Linux >= 6.6)")
        return Check(NATIVE_XDP, False, True, f"attach on {b.iface} failed: {e}",
                     "use Linux >= 5.17 (veth native XDP with bpf_link, and bpf_loop for the rule scan); run kbypass doctor after make setup")
    return Check(NATIVE_XDP, True, True, f"attached and detached on {b.netns}/{b.iface}")


MULTI_BUFFER = "multi-buffer AF_XDP (jumbo frames)"


def check_multi_buffer(ifname: str = "lo") -> Check:
    """Bind an AF_XDP socket with XDP_USE_SG (copy mode) on `ifname`, queue 0: what packets larger than one
    UMEM frame need (Linux >= 6.6); and the kernel's frag limit, which bounds the packets a port sends."""
    from kbypass.xsk import multibuf
    from kbypass.xsk.socket import XskError, XskSocket
    from kbypass.xsk.umem import Umem

    frags = multibuf.MAX_SKB_FRAGS
    limit = multibuf.tx_frame_limit()
    sizes = (f"MAX_SKB_FRAGS {frags}: a sent packet spans at most {limit} frames ({limit * 2048:,} bytes with "
             f"2048-byte frames, {min(limit * 4096, 65535 + 14):,} with 4096); testbed MTU up to "
             f"{testbed.FRAGS_MAX_MTU} (kbypass's XDP programs are frags-aware)")
    try:
        with Umem(frames=64, frame_size=2048) as umem, \
                XskSocket(umem, ifname, 0, rx_size=64, tx_size=64, fill_size=64, comp_size=64, mode="copy",
                          multi_buffer=True):
            pass
    except XskError as e:
        if e.errno == errno.EBUSY:
            return Check(MULTI_BUFFER, True, False, f"not tried ({ifname} queue 0 is in use); {sizes}")
        return Check(MULTI_BUFFER, False, False, f"binding with XDP_USE_SG failed: {e}",
                     "use Linux >= 6.6 for packets larger than one frame (MTU above 1778 with 2048-byte frames, "
                     "3826 with 4096); smaller MTUs need nothing")
    except Exception as e:  # not root, no AF_XDP: the checks above say so; here it only could not be tried
        return Check(MULTI_BUFFER, False, False, f"not tried: {e}", "run kbypass doctor as root")
    return Check(MULTI_BUFFER, True, False, f"XDP_USE_SG binds (copy mode); {sizes}")


def _tool(name: str, package: str, why: str) -> Callable[[], Check]:
    def check() -> Check:
        path = shutil.which(name)
        if path:
            return Check(name, True, False, path)
        return Check(name, False, False, f"{name} not found ({why})", f"apt-get install {package}")

    return check


CHECKS: list[Callable[[], Check]] = [
    check_root,
    check_bpf_syscall,
    check_af_xdp,
    check_bpffs,
    check_btf,
    check_clang,
    check_libbpf,
    check_bpf_objects,
    check_native,
    check_native_xdp,
    check_multi_buffer,
    _tool("sockperf", "sockperf", "latency anchor for benchmarks"),
    _tool("tshark", "tshark", "independent dissector in tests"),
    _tool("dpdk-testpmd", "dpdk dpdk-dev", "DPDK anchor for benchmarks"),
    _tool("ping", "iputils-ping", "kernel peer in tests"),
]


def run(checks: list[Callable[[], Check]] | None = None, *, prefix: str | None = None,
        require_testbed: bool = False) -> list[Check]:
    """Run `checks` (default: all); the native-XDP check looks at testbed `prefix` (default: $KBYPASS_TESTBED
    or "kb") and, with `require_testbed`, fails instead of warning when that testbed is not up."""
    out = []
    for check in checks or CHECKS:
        if check is check_native_xdp:
            out.append(check_native_xdp(prefix, require_testbed=require_testbed))
        else:
            out.append(check())
    return out


def healthy(results: list[Check]) -> bool:
    return all(c.ok for c in results if c.required)
