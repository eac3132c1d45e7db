import numpy as np
from scapy.utils import rdpcap

from kbypass.apps.pcap import PcapWriter
from kbypass.port.batch import DESC, Batch


def make_batch(frames: list[bytes], frame_size: int = 2048) -> Batch:
    mem = np.zeros(frame_size * len(frames), dtype=np.uint8)
    descs = np.zeros(len(frames), dtype=DESC)
    for i, f in enumerate(frames):
        descs[i]["addr"] = i * frame_size + 7  # not at the chunk start, as with headroom
        descs[i]["len"] = len(f)
        mem[i * frame_size + 7: i * frame_size + 7 + len(f)] = np.frombuffer(f, dtype=np.uint8)
    return Batch(descs, mem)


def test_scapy_reads_back_every_frame_and_snaplen_cuts(tmp_path):
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() for n in (60, 61, 1514, 100, 14)]
    path = tmp_path / "x.pcap"
    with PcapWriter(str(path), snaplen=100) as w:
        w.write_batch(make_batch(frames[:3]), now=1000.25)
        w.write_batch(make_batch(frames[3:]), now=1001.5)
        w.write_batch(make_batch([]))
    got = rdpcap(str(path))
    assert [bytes(p) for p in got] == [f[:100] for f in frames]
    assert [p.wirelen for p in got] == [len(f) for f in frames]
    assert float(got[0].time) == 1000.25 and float(got[4].time) == 1001.5
