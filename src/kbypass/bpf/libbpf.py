"""The narrow C boundary to libbpf (libbpf.so.1, Debian 1.1.x), through ctypes.

Only what kbypass needs is declared, all in this file: open/load an object, find programs and maps, map
update/lookup/delete on fds, attach XDP through a bpf_link, query which XDP program an interface has,
BPF_PROG_TEST_RUN, the library version, and walking the kernel's program, map and link ids (bpf/ids.py). Everything else in kbypass talks to these Python wrappers.

Ownership: a `BpfObject` owns the loaded programs and maps (their fds die with `close()`); an `XdpLink`
owns one attachment, and the kernel detaches the program when the link's last fd is closed - including
when the process dies, which is why attachments are links and never netlink (`ip link set xdp`) ones.
Map fds may be used from several threads (each call is one syscall); the wrappers keep no shared state.

Errors from libbpf come back as negative errno (libbpf 1.x "strict" mode); `_check` turns them into
`KbypassError`s that name the fix.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from kbypass.errors import EnvironmentProblem, KbypassError, PermissionProblem

OBJ_DIR = Path(__file__).resolve().parent / "obj"

# Constants from <linux/bpf.h> / <linux/if_link.h> (stable kernel ABI).
BPF_XDP = 37  # enum bpf_attach_type
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
XDP_ATTACHED_NONE, XDP_ATTACHED_DRV, XDP_ATTACHED_SKB, XDP_ATTACHED_HW, XDP_ATTACHED_MULTI = range(5)


class _LinkCreateOpts(ctypes.Structure):
    # The leading part of struct bpf_link_create_opts; libbpf accepts a shorter `sz` from older callers
    # and treats the missing tail as zero, so declaring only what we set is within its contract.
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class _XdpQueryOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
    ]


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


_P = ctypes.c_void_p
_I = ctypes.c_int
_U32 = ctypes.c_uint32
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_version_string": (ctypes.c_char_p, []),
    "libbpf_num_possible_cpus": (_I, []),
    "bpf_object__open_file": (_P, [ctypes.c_char_p, _P]),
    "bpf_object__load": (_I, [_P]),
    "bpf_object__close": (None, [_P]),
    "bpf_object__find_program_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_object__find_map_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_program__fd": (_I, [_P]),
    "bpf_map__fd": (_I, [_P]),
    "bpf_map__key_size": (_U32, [_P]),
    "bpf_map__value_size": (_U32, [_P]),
    "bpf_map__max_entries": (_U32, [_P]),
    "bpf_map__type": (_I, [_P]),
    "bpf_map_update_elem": (_I, [_I, _P, _P, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (_I, [_I, _P, _P]),
    "bpf_map_delete_elem": (_I, [_I, _P]),
    "bpf_link_create": (_I, [_I, _I, _I, _P]),
    "bpf_xdp_query": (_I, [_I, _I, _P]),
    "bpf_obj_get_info_by_fd": (_I, [_I, _P, _P]),
    "bpf_prog_get_fd_by_id": (_I, [_U32]),
    "bpf_prog_test_run_opts": (_I, [_I, _P]),
    "bpf_prog_get_next_id": (_I, [_U32, _P]),
    "bpf_map_get_next_id": (_I, [_U32, _P]),
    "bpf_link_get_next_id": (_I, [_U32, _P]),
    "bpf_map_get_fd_by_id": (_I, [_U32]),
    "bpf_link_get_fd_by_id": (_I, [_U32]),
}

_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """libbpf.so.1 with the signatures above declared (loaded once, on first use)."""
    global _lib
    if _lib is None:
        name = "libbpf.so.1"
        try:
            handle = ctypes.CDLL(name, use_errno=True)
        except OSError:
            found = ctypes.util.find_library("bpf")
            if not found:
                raise EnvironmentProblem(
                    "libbpf.so.1 not found: install it with 'apt-get install libbpf1' (or run 'make setup')"
                ) from None
            handle = ctypes.CDLL(found, use_errno=True)
        for fname, (restype, argtypes) in _SIGNATURES.items():
            try:
                fn = getattr(handle, fname)
            except AttributeError:
                raise EnvironmentProblem(
                    f"libbpf lacks {fname}(): kbypass needs libbpf >= 1.1 ('apt-get install libbpf1')"
                ) from None
            fn.restype = restype
            fn.argtypes = argtypes
        _lib = handle
    return _lib


def version() -> str:
    """libbpf's version string, e.g. 'v1.1'."""
    return lib().libbpf_version_string().decode()


def possible_cpus() -> int:
    """Number of possible CPUs: the number of values a per-CPU map lookup returns."""
    n = lib().libbpf_num_possible_cpus()
    if n <= 0:
        raise EnvironmentProblem(f"cannot count possible CPUs: {os.strerror(-n)}")
    return n


def object_path(name: str) -> Path:
    """Path of the built object for bpf/<name>.bpf.c, i.e. src/kbypass/bpf/obj/<name>.bpf.o."""
    return OBJ_DIR / f"{name}.bpf.o"


class BpfCallError(KbypassError):
    """A libbpf call failed; `errno` says how (callers turn the common ones into a specific fix)."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


def _check(rc: int, what: str) -> int:
    if rc >= 0:
        return rc
    err = -rc
    if err in (errno.EPERM, errno.EACCES) and os.geteuid() != 0:
        raise PermissionProblem(f"{what}: {os.strerror(err)}: run as root (CAP_BPF and CAP_NET_ADMIN)")
    raise BpfCallError(f"{what}: {os.strerror(err)} (errno {err})", err)


def _errno_of_null(what: str) -> None:
    err = ctypes.get_errno() or errno.EINVAL
    _check(-err, what)


@dataclass(frozen=True)
class XdpInfo:
    """What `bpf_xdp_query` says about one interface (ids are kernel prog ids, 0 = none)."""

    prog_id: int
    drv_prog_id: int
    skb_prog_id: int
    hw_prog_id: int
    attach_mode: int  # XDP_ATTACHED_*

    @property
    def attached(self) -> bool:
        return self.attach_mode != XDP_ATTACHED_NONE

    @property
    def ids(self) -> tuple[int, ...]:
        """The distinct attached program ids (prog_id repeats the one of the single attached mode)."""
        return tuple(dict.fromkeys(i for i in (self.prog_id, self.drv_prog_id, self.skb_prog_id, self.hw_prog_id) if i))


def xdp_query(ifindex: int) -> XdpInfo:
    """Which XDP program(s) interface `ifindex` has (in the caller's current network namespace)."""
    opts = _XdpQueryOpts(sz=ctypes.sizeof(_XdpQueryOpts))
    _check(lib().bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), f"query XDP on ifindex {ifindex}")
    return XdpInfo(opts.prog_id, opts.drv_prog_id, opts.skb_prog_id, opts.hw_prog_id, opts.attach_mode)


def prog_id(prog_fd: int) -> int:
    """Kernel id of the program behind `prog_fd` (as shown by bpftool and bpf_xdp_query)."""
    buf = (ctypes.c_uint32 * 2)()  # struct bpf_prog_info starts {__u32 type; __u32 id; ...}
    n = ctypes.c_uint32(ctypes.sizeof(buf))
    _check(lib().bpf_obj_get_info_by_fd(prog_fd, buf, ctypes.byref(n)), "get program info")
    return int(buf[1])


def verified_insns(prog_fd: int) -> int | None:
    """Instructions the verifier processed to load the program behind `prog_fd` (the kernel refuses a
    program at 1,000,000), or None on a kernel older than 5.16, which does not report it."""
    # struct bpf_prog_info: `__u32 verified_insns` at offset 216 (stable UAPI layout, Linux >= 5.16)
    buf = ctypes.create_string_buffer(220)
    n = ctypes.c_uint32(220)
    _check(lib().bpf_obj_get_info_by_fd(prog_fd, buf, ctypes.byref(n)), "get program info")
    if n.value < 220:
        return None
    return int.from_bytes(buf.raw[216:220], "little")


def prog_name(prog_id: int) -> str | None:
    """Name of the loaded program with kernel id `prog_id` (None if it is gone or unreadable)."""
    fd = lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        # struct bpf_prog_info up to and including `char name[16]` at offset 64 (stable UAPI layout)
        buf = ctypes.create_string_buffer(80)
        n = ctypes.c_uint32(80)
        if lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(n)) < 0 or n.value < 80:
            return None
        return buf.raw[64:80].split(b"\0", 1)[0].decode(errors="replace") or None
    finally:
        os.close(fd)


class XdpLink:
    """One XDP attachment held by a bpf_link fd; `close()` (or process death) detaches it."""

    def __init__(self, fd: int, ifindex: int, mode: str) -> None:
        self.fd: int | None = fd
        self.ifindex = ifindex
        self.mode = mode  # "native" or "skb"

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:  # a link nobody holds should not keep the program attached
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> XdpLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def attach_xdp(prog_fd: int, ifindex: int, mode: str) -> XdpLink:
    """Attach through BPF_LINK_CREATE in `mode` "native" (driver) or "skb" (generic).

    bpf_program__attach_xdp() cannot pass the mode flags in libbpf 1.1, so this calls bpf_link_create()
    with them; the result is the same kind of link (released when its fd closes).
    """
    flags = {"native": XDP_FLAGS_DRV_MODE, "skb": XDP_FLAGS_SKB_MODE}[mode]
    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=flags)
    fd = _check(lib().bpf_link_create(prog_fd, ifindex, BPF_XDP, ctypes.byref(opts)), f"attach XDP ({mode} mode)")
    return XdpLink(fd, ifindex, mode)


@dataclass(frozen=True)
class TestRun:
    """Result of one BPF_PROG_TEST_RUN: the program's return code and the (maybe rewritten) frame."""

    __test__ = False  # not a pytest test class
    retval: int
    data: bytes
    duration_ns: int


BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


def test_run(
    prog_fd: int, data: bytes, ctx: bytes | None = None, repeat: int = 1, flags: int = 0, batch_size: int = 0
) -> TestRun:
    """Run a loaded program `repeat` times on `data` without attaching it (needs root).

    `ctx` is a packed struct xdp_md: data 0, data_end len(data) (with 0 the verdicts come out wrong),
    data_meta 0, ingress_ifindex and rx_queue_index (the ifindex is looked up in the calling thread's
    namespace), egress_ifindex 0. With flags=BPF_F_TEST_XDP_LIVE_FRAMES the frames really go out (XDP_TX,
    redirects) and no output frame comes back.
    """
    live = bool(flags & BPF_F_TEST_XDP_LIVE_FRAMES)
    inbuf = ctypes.create_string_buffer(bytes(data), len(data))
    out = ctypes.create_string_buffer(len(data) + 512)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
    opts.data_in = ctypes.cast(inbuf, ctypes.c_void_p)
    opts.data_size_in = len(data)
    if not live:  # the kernel refuses an output buffer for live frames
        opts.data_out = ctypes.cast(out, ctypes.c_void_p)
        opts.data_size_out = len(out)
    opts.repeat = repeat
    opts.flags = flags
    opts.batch_size = batch_size
    if ctx is not None:
        cbuf = ctypes.create_string_buffer(bytes(ctx), len(ctx))
        opts.ctx_in = ctypes.cast(cbuf, ctypes.c_void_p)
        opts.ctx_size_in = len(ctx)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return TestRun(opts.retval, b"" if live else out.raw[: opts.data_size_out], opts.duration)


class BpfMap:
    """A map of a loaded object, addressed through its fd. Keys and values are raw bytes.

    Per-CPU maps take and return `value_size` rounded up to 8, times `possible_cpus()`, as the kernel does.
    """

    PERCPU_TYPES = {5, 6, 10, 21}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE

    def __init__(self, name: str, fd: int, key_size: int, value_size: int, max_entries: int, map_type: int):
        self.name = name
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.type = map_type
        self.percpu = map_type in self.PERCPU_TYPES
        self.ncpus = possible_cpus() if self.percpu else 1

    @property
    def lookup_size(self) -> int:
        """Bytes a lookup returns: one value, or one 8-aligned value per possible CPU."""
        if self.percpu:
            return ((self.value_size + 7) // 8 * 8) * self.ncpus
        return self.value_size

    def _key(self, key: bytes | int) -> ctypes.Array[ctypes.c_char]:
        if isinstance(key, int):
            key = key.to_bytes(self.key_size, "little")
        if len(key) != self.key_size:
            raise KbypassError(f"map {self.name}: key is {len(key)} bytes, expected {self.key_size}")
        return ctypes.create_string_buffer(key, len(key))

    def update(self, key: bytes | int, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self.lookup_size:
            raise KbypassError(f"map {self.name}: value is {len(value)} bytes, expected {self.lookup_size}")
        kbuf = self._key(key)
        vbuf = ctypes.create_string_buffer(value, len(value))
        _check(lib().bpf_map_update_elem(self.fd, kbuf, vbuf, flags), f"update map {self.name}")

    def lookup(self, key: bytes | int) -> bytes | None:
        kbuf = self._key(key)
        vbuf = ctypes.create_string_buffer(self.lookup_size)
        rc = lib().bpf_map_lookup_elem(self.fd, kbuf, vbuf)
        if rc == -errno.ENOENT:
            return None
        _check(rc, f"look up map {self.name}")
        return vbuf.raw

    def delete(self, key: bytes | int) -> bool:
        """Delete `key`; False when it was not there."""
        rc = lib().bpf_map_delete_elem(self.fd, self._key(key))
        if rc == -errno.ENOENT:
            return False
        _check(rc, f"delete from map {self.name}")
        return True


class BpfObject:
    """A loaded BPF object file. Owns its programs and maps until `close()`; not thread-safe to close."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if not path.exists():
            raise EnvironmentProblem(f"BPF object {path} is not built: run 'make setup' (or 'make bpf')")
        self.path = path
        handle = lib().bpf_object__open_file(str(path).encode(), None)
        if not handle:
            _errno_of_null(f"open BPF object {path}")
        self._obj: int | None = handle
        self._maps: dict[str, BpfMap] = {}
        try:
            _check(lib().bpf_object__load(handle), f"load BPF object {path.name} (verifier log above)")
        except BaseException:
            self.close()
            raise

    @classmethod
    def named(cls, name: str) -> BpfObject:
        """Open and load src/kbypass/bpf/obj/<name>.bpf.o."""
        return cls(object_path(name))

    def _handle(self) -> int:
        if self._obj is None:
            raise KbypassError(f"BPF object {self.path.name} is closed")
        return self._obj

    def program_fd(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._handle(), name.encode())
        if not prog:
            raise KbypassError(f"{self.path.name} has no program {name!r}: rebuild it with 'make bpf'")
        return _check(lib().bpf_program__fd(prog), f"program {name}")

    def map(self, name: str) -> BpfMap:
        if name not in self._maps:
            m = lib().bpf_object__find_map_by_name(self._handle(), name.encode())
            if not m:
                raise KbypassError(f"{self.path.name} has no map {name!r}: rebuild it with 'make bpf'")
            L = lib()
            self._maps[name] = BpfMap(
                name,
                _check(L.bpf_map__fd(m), f"map {name}"),
                L.bpf_map__key_size(m),
                L.bpf_map__value_size(m),
                L.bpf_map__max_entries(m),
                L.bpf_map__type(m),
            )
        return self._maps[name]

    def close(self) -> None:
        if self._obj is not None:
            lib().bpf_object__close(self._obj)
            self._obj = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
