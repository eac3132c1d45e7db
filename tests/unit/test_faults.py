"""FaultyLink: every fault happens at the configured rate, reproducibly, and the link stays bounded."""

import pytest

from kbypass.proto.faults import FaultyLink, GilbertElliott


def pump(link, n=2000, size=100, gap=0.001):
    """Send n numbered datagrams, one per `gap` seconds; collect everything delivered."""
    got = []
    for i in range(n):
        now = i * gap
        link.send(i.to_bytes(4, "big") + bytes(size - 4), now)
        got += link.deliver(now)
    got += link.deliver(1e9)
    return got


def test_perfect_link_delivers_everything_in_order_after_delay():
    link = FaultyLink(1, delay=0.05)
    link.send(b"a", 0.0)
    link.send(b"b", 0.01)
    assert link.next_time() == pytest.approx(0.05)
    assert link.deliver(0.049) == []
    assert link.deliver(0.05) == [b"a"]
    assert link.deliver(1.0) == [b"b"]
    assert link.next_time() is None
    assert link.stats.delivered == 2


def test_same_seed_same_fate_and_different_seed_different():
    kw = dict(loss=0.2, reorder=0.2, duplicate=0.1, corrupt=0.1, delay=0.01, jitter=0.005)
    a, b, c = (pump(FaultyLink(s, **kw)) for s in (7, 7, 8))
    assert a == b
    assert a != c


def test_loss_rate_is_close_to_configured():
    link = FaultyLink(3, loss=0.2)
    got = pump(link, n=5000)
    assert link.stats.lost == 5000 - len(got)
    assert 0.17 < link.stats.lost / 5000 < 0.23


def test_gilbert_elliott_losses_come_in_bursts():
    link = FaultyLink(4, burst=GilbertElliott(p_bad=0.02, p_good=0.25))
    got = {int.from_bytes(d[:4], "big") for d in pump(link, n=5000)}
    lost = [i for i in range(5000) if i not in got]
    runs, run = [], 1
    for x, y in zip(lost, lost[1:]):
        if y == x + 1:
            run += 1
        else:
            runs.append(run)
            run = 1
    runs.append(run)
    assert link.stats.burst_lost == len(lost) > 100
    assert sum(runs) / len(runs) > 2.5  # mean burst ~ 1 / p_good = 4; independent loss would give ~1


def test_duplication_and_reordering_happen():
    link = FaultyLink(5, duplicate=0.1, reorder=0.2, reorder_delay=0.02)
    got = [int.from_bytes(d[:4], "big") for d in pump(link, n=2000)]
    assert len(got) == 2000 + link.stats.duplicated and link.stats.duplicated > 100
    assert got != sorted(got)
    assert sorted(set(got)) == list(range(2000))


def test_corruption_changes_bytes_but_not_length():
    link = FaultyLink(6, corrupt=0.5)
    sent = bytes(range(100))
    got = []
    for i in range(400):
        link.send(sent, i)
        got += link.deliver(i)
    assert all(len(d) == 100 for d in got)
    bad = sum(d != sent for d in got)
    assert bad == link.stats.corrupted
    assert 150 < bad < 250


def test_blackhole_period_drops_everything_inside_it():
    link = FaultyLink(7, blackholes=((1.0, 2.0),))
    for t in (0.5, 1.0, 1.5, 1.999, 2.0, 2.5):
        link.send(str(t).encode(), t)
    assert link.deliver(10) == [b"0.5", b"2.0", b"2.5"]
    assert link.stats.blackholed == 3


def test_rate_limit_serializes_and_queue_limit_bounds_memory():
    link = FaultyLink(8, rate_bps=8000, queue_limit=5)  # 1000 bytes/s: a 100-byte datagram takes 0.1 s
    for _ in range(20):
        link.send(bytes(100), 0.0)
    assert link.stats.queue_drops == 15
    assert link.in_flight == 5
    times = []
    while link.next_time() is not None:
        t = link.next_time()
        times.append(round(t, 6))
        link.deliver(t)
    assert times == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        FaultyLink(1, loss=1.5)
    with pytest.raises(ValueError):
        FaultyLink(1, rate_bps=0)
    with pytest.raises(ValueError):
        FaultyLink(1, delay=-1)


def test_parse_spec_builds_link_arguments_and_names_bad_parts():
    from kbypass.proto.faults import parse_spec

    kw = parse_spec("loss=0.05, delay=0.01,burst=0.01/0.3,blackhole=2-4,queue_limit=7")
    assert kw == dict(loss=0.05, delay=0.01, burst=GilbertElliott(0.01, 0.3), blackholes=((2.0, 4.0),),
                      queue_limit=7)
    FaultyLink(1, **kw)
    assert parse_spec("") == {}
    with pytest.raises(ValueError, match="unknown fault 'lose'"):
        parse_spec("lose=0.1")
    with pytest.raises(ValueError, match="bad fault 'loss'"):
        parse_spec("loss")
    with pytest.raises(ValueError, match="blackhole=2-4"):
        parse_spec("burst=0.1")
