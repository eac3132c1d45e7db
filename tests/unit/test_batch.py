"""Batch: vectorized header access on synthetic frames laid out in a UMEM-like array."""

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from kbypass.errors import UsageError
from kbypass.port.batch import DESC, IPV4_DST, IPV4_SRC, UDP_DPORT, UDP_PAYLOAD, UDP_SPORT, Batch

# every test twice: per-batch bookkeeping in C (kbypass._fastbatch) and in numpy
pytestmark = pytest.mark.usefixtures("batch_impl")

FRAME = 2048
HEADROOM = 256  # frames from the kernel start past the headroom, not at the chunk start


def udp_frame(i: int) -> bytes:
    pkt = (Ether(src=f"02:00:00:00:00:{i:02x}", dst="02:00:00:00:01:00")
           / IP(src=f"10.0.0.{i + 1}", dst="10.0.1.1", id=i)
           / UDP(sport=1000 + i, dport=4321)
           / (int(i * 7).to_bytes(8, "big") + bytes(range(i % 5 + 10))))
    return bytes(pkt)


def make_batch(n=12):
    mem = np.zeros(FRAME * (n + 2), dtype=np.uint8)
    frames = [udp_frame(i) for i in range(n)]
    descs = np.zeros(n, dtype=DESC)
    # deliberately not in order and not contiguous: frame i lives in chunk n+1-i
    for i, f in enumerate(frames):
        addr = (n + 1 - i) * FRAME + HEADROOM
        mem[addr : addr + len(f)] = np.frombuffer(f, dtype=np.uint8)
        descs[i] = (addr, len(f), 0)
    return Batch(descs, mem), frames


def test_len_frame_tobytes():
    b, frames = make_batch()
    assert len(b) == 12 and bool(b) and not Batch.empty(b.mem)
    for i, f in enumerate(frames):
        assert b.tobytes(i) == f
    view = b.frame(3)
    view[0] = 0xAA  # a view, not a copy
    assert b.mem[int(b.addr[3])] == 0xAA


def test_u16be_reads_ports_of_every_frame():
    b, frames = make_batch()
    assert b.u16be(UDP_DPORT).tolist() == [4321] * 12
    assert b.u16be(UDP_SPORT).tolist() == [1000 + i for i in range(12)]
    assert b.u16be(12).tolist() == [0x0800] * 12
    assert b.u8(14).tolist() == [0x45] * 12
    assert b.u32be(IPV4_SRC).tolist() == [(10 << 24) + i + 1 for i in range(12)]
    assert b.u16be(UDP_DPORT).dtype == np.uint16


def test_set_u16be_writes_only_that_field():
    b, frames = make_batch()
    b.set_u16be(UDP_DPORT, np.arange(12) + 5000)
    assert b.u16be(UDP_DPORT).tolist() == list(range(5000, 5012))
    for i, f in enumerate(frames):
        got = b.tobytes(i)
        assert got[:36] == f[:36] and got[38:] == f[38:]
        assert got[36:38] == (5000 + i).to_bytes(2, "big")
    b.set_u16be(UDP_SPORT, 7)  # a scalar for all
    assert set(b.u16be(UDP_SPORT).tolist()) == {7}
    b.set_u32be(IPV4_DST, 0x0A0B0C0D)
    assert Ether(b.tobytes(0))[IP].dst == "10.11.12.13"


def test_payload_u64_sequence_numbers():
    b, _ = make_batch()
    assert b.payload_u64(UDP_PAYLOAD).tolist() == [i * 7 for i in range(12)]
    b.set_payload_u64(UDP_PAYLOAD, np.arange(12, dtype=np.uint64) + 2**40)
    assert b.payload_u64().tolist() == [2**40 + i for i in range(12)]
    little = b.payload_u64(UDP_PAYLOAD, big_endian=False)
    assert little[1] == int.from_bytes((2**40 + 1).to_bytes(8, "big"), "little")


def test_swap_macs():
    b, frames = make_batch()
    b.swap_macs()
    for i, f in enumerate(frames):
        got = b.tobytes(i)
        assert got[0:6] == f[6:12] and got[6:12] == f[0:6] and got[12:] == f[12:]


def test_swap_ips_and_ports_keeps_checksums_valid():
    b, frames = make_batch()
    b.swap_ips_and_ports()
    for i, f in enumerate(frames):
        orig, got = Ether(f), Ether(b.tobytes(i))
        assert (got[IP].src, got[IP].dst) == (orig[IP].dst, orig[IP].src)
        assert (got[UDP].sport, got[UDP].dport) == (orig[UDP].dport, orig[UDP].sport)
        # recompute both checksums with scapy and compare with what is in the frame
        ip_ck, udp_ck = got[IP].chksum, got[UDP].chksum
        del got[IP].chksum, got[UDP].chksum
        again = Ether(bytes(got))
        assert (again[IP].chksum, again[UDP].chksum) == (ip_ck, udp_ck)


def test_short_frames_are_refused():
    b, _ = make_batch(3)
    b.descs["len"][1] = 37  # ends inside the UDP destination port
    with pytest.raises(UsageError, match="past the end of a 37-byte frame"):
        b.u16be(UDP_DPORT)
    with pytest.raises(UsageError):
        b.swap_ips_and_ports()
    ok = b[b.lens >= 42]
    assert len(ok) == 2 and ok.u16be(UDP_DPORT).tolist() == [4321, 4321]
    before = [b.tobytes(i) for i in range(3)]
    with pytest.raises(UsageError):
        b.swap_ips_and_ports()
    assert [b.tobytes(i) for i in range(3)] == before  # all or nothing: no frame was touched


def test_swaps_on_a_strided_slice_touch_only_its_frames():
    b, frames = make_batch(6)
    b[::2].swap_macs()
    for i, f in enumerate(frames):
        got = b.tobytes(i)
        assert got == (f[6:12] + f[0:6] + f[12:] if i % 2 == 0 else f)


def test_slicing_and_masks():
    b, frames = make_batch()
    part = b[2:5]
    assert len(part) == 3 and part.tobytes(0) == frames[2]
    sel = b[b.u16be(UDP_SPORT) % 2 == 0]
    assert len(sel) == 6 and sel.u16be(UDP_SPORT).tolist() == [1000, 1002, 1004, 1006, 1008, 1010]
    with pytest.raises(TypeError):
        b[0]


def test_fill_and_write():
    mem = np.zeros(FRAME * 4, dtype=np.uint8)
    descs = np.zeros(4, dtype=DESC)
    descs["addr"] = np.arange(4) * FRAME
    b = Batch(descs, mem)
    tmpl = udp_frame(1)
    b.fill(tmpl)
    assert all(b.tobytes(i) == tmpl for i in range(4)) and b.lens.tolist() == [len(tmpl)] * 4
    b.write(2, b"\xee" * 4, offset=len(tmpl))
    assert b.lens[2] == len(tmpl) + 4 and b.tobytes(2).endswith(b"\xee" * 4)
    assert mem[FRAME * 3 + len(tmpl)] == 0  # the next frame untouched


def test_empty_batch_operations():
    b = Batch.empty(np.zeros(4096, dtype=np.uint8))
    assert len(b.u16be(UDP_DPORT)) == 0
    b.swap_macs()
    b.set_u16be(UDP_DPORT, [])


def test_field_access_matches_a_per_frame_reference_at_any_address():
    """The strided fast path (one void element per field) against plain slicing, for frames at odd and
    mixed offsets, a frame ending at the very end of memory, and widths 1..16."""
    rng = np.random.default_rng(7)
    mem = rng.integers(0, 256, 5000, dtype=np.uint8)
    addrs = np.array([0, 101, 777, 1999, 3001, 5000 - 64], dtype=np.uint64)  # disjoint frames
    descs = np.zeros(len(addrs), dtype=DESC)
    descs["addr"], descs["len"] = addrs, 64
    b = Batch(descs, mem)
    for width in (1, 2, 6, 12, 16):
        for offset in (0, 5, 64 - width):
            want = np.stack([mem[int(a) + offset:int(a) + offset + width] for a in addrs])
            assert (b.bytes_at(offset, width) == want).all()
            new = rng.integers(0, 256, (len(addrs), width), dtype=np.uint8)
            b.set_bytes(offset, new)
            assert all((mem[int(a) + offset:int(a) + offset + width] == new[i]).all() for i, a in enumerate(addrs))
    before = np.stack([mem[int(a):int(a) + 12] for a in addrs])
    b.swap_macs()
    after = np.stack([mem[int(a):int(a) + 12] for a in addrs])
    assert (after[:, :6] == before[:, 6:]).all() and (after[:, 6:] == before[:, :6]).all()
    b.set_bytes(3, np.arange(4, dtype=np.uint8))  # one row for every frame
    assert all((mem[int(a) + 3:int(a) + 7] == np.arange(4)).all() for a in addrs)


def _chunks(n=3, headroom=0, frame_size=FRAME):
    mem = np.zeros(frame_size * n, dtype=np.uint8)
    descs = np.zeros(n, dtype=DESC)
    descs["addr"] = np.arange(n) * frame_size + headroom
    return mem, descs


class _UmemOwner:
    class umem:
        frame_size = FRAME


def test_fill_past_the_frame_end_is_refused_before_writing():
    """2500 bytes do not fit a 2048-byte frame: nothing is written (the next frame stays intact)."""
    mem, descs = _chunks()
    b = Batch(descs, mem, frame_size=FRAME)
    with pytest.raises(UsageError, match="2500 bytes.*room for 2048"):
        b.fill(b"\xab" * 2500)
    assert not mem.any() and b.lens.tolist() == [0, 0, 0]
    # the owner port's UMEM frame size counts the same; headroom (addr past the chunk start) is taken off
    mem, descs = _chunks(headroom=HEADROOM)
    b = Batch(descs, mem, _UmemOwner())
    assert b.room().tolist() == [FRAME - HEADROOM] * 3
    with pytest.raises(UsageError, match=f"room for {FRAME - HEADROOM}"):
        b.fill(b"\xab" * (FRAME - HEADROOM + 1))
    assert not mem.any()
    b.fill(b"\xab" * (FRAME - HEADROOM))  # exactly full is fine
    assert mem[FRAME : FRAME + HEADROOM].sum() == 0  # the next frame's headroom untouched


def test_fill_of_the_last_frame_is_a_usage_error_not_an_index_error():
    mem, descs = _chunks()
    b = Batch(descs, mem)  # no frame size known: bounded by the memory's end
    with pytest.raises(UsageError, match="room for 2048"):
        b.fill(b"\xab" * 2500)
    assert not mem.any()


def test_write_past_the_frame_end_is_refused_before_writing():
    mem, descs = _chunks()
    b = Batch(descs, mem, frame_size=FRAME)
    with pytest.raises(UsageError, match="needs 2049 bytes but the frame has room for 2048"):
        b.write(0, b"\xee" * 49, offset=2000)
    with pytest.raises(UsageError, match="room for 2048"):
        b.write(2, b"\xee" * 2049)  # the last frame: no IndexError either
    with pytest.raises(UsageError, match="offset -1"):
        b.write(1, b"\xee", offset=-1)
    assert not mem.any() and b.lens.tolist() == [0, 0, 0]
    b.write(-1, b"\xee" * 48, offset=2000)
    assert b.lens.tolist() == [0, 0, 2048] and b[1:].room().tolist() == [FRAME, FRAME]  # slices keep the size


def test_packet_mmap_frame_ends():
    """Staging frames may grow to their slot's end; received frames (packed in an RX block) may not grow."""
    from kbypass.port.packet_mmap import PacketMmapPort

    port = object.__new__(PacketMmapPort)
    port.staging_base, port.frame_size = 8 * FRAME, FRAME
    mem = np.zeros(12 * FRAME, dtype=np.uint8)
    descs = np.zeros(3, dtype=DESC)
    descs["addr"], descs["len"] = [8 * FRAME, 9 * FRAME, 100], [0, 60, 60]
    b = Batch(descs, mem, port)
    assert b.room().tolist() == [FRAME, FRAME, 60]
    with pytest.raises(UsageError, match="room for 60"):
        b.write(2, b"x", offset=60)
    with pytest.raises(UsageError, match="room for 60"):
        b.fill(b"x" * 61)


def test_stamp_writes_consecutive_numbers_and_the_time_big_endian():
    b, frames = make_batch(6)
    sub = b[::2]  # a strided slice: only its frames change
    sub.stamp(UDP_PAYLOAD, 2**64 - 2, 0x0102030405060708)  # the sequence number wraps past 2**64 - 1
    for i, f in enumerate(frames):
        got = b.tobytes(i)
        if i % 2:
            assert got == f
        else:
            seq = (2**64 - 2 + i // 2) % 2**64
            want = seq.to_bytes(8, "big") + bytes(range(1, 9))
            assert got == f[:UDP_PAYLOAD] + want + f[UDP_PAYLOAD + 16:]


def test_stamp_refuses_a_short_frame_and_writes_nothing():
    b, _ = make_batch(3)
    b.descs["len"][2] = UDP_PAYLOAD + 15
    before = [b.tobytes(i) for i in range(3)]
    with pytest.raises(UsageError, match=f"past the end of a {UDP_PAYLOAD + 15}-byte frame"):
        b.stamp(UDP_PAYLOAD, 1, 2)
    assert [b.tobytes(i) for i in range(3)] == before


@pytest.mark.parametrize("rewrite", [lambda b: b.swap_macs(), lambda b: b.stamp(UDP_PAYLOAD, 1, 2)])
def test_c_rewrites_refuse_a_descriptor_past_the_memory(rewrite, batch_impl):
    """A hand-made descriptor whose frame runs past the packet memory: the C pass says so instead of
    writing past the buffer (numpy's gather raises its own IndexError)."""
    b, _ = make_batch(2)
    b.descs["addr"][1] = len(b.mem) - 8  # fewer bytes left than either rewrite touches
    with pytest.raises(IndexError):
        rewrite(b)
