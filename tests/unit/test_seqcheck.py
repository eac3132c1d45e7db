import numpy as np

from kbypass.apps.seqcheck import SeqChecker


def feed(*batches):
    c = SeqChecker()
    for b in batches:
        c.update(np.array(b, dtype=np.uint64))
    return c.summary()


def test_in_order_stream():
    s = feed(range(0, 100), range(100, 250))
    assert s == {"received": 250, "expected": 250, "lost": 0, "reordered": 0, "duplicates": 0, "too_old": 0,
                 "first_seq": 0, "last_seq": 249}


def test_gaps_are_lost_and_late_arrivals_reordered():
    s = feed([10, 11, 14, 15], [12, 16, 17])  # 13 never comes; 12 comes late
    assert s["lost"] == 1 and s["reordered"] == 1 and s["expected"] == 8 and s["received"] == 7


def test_duplicates_are_counted_apart_and_never_fill_a_gap():
    s = feed([5, 6, 6, 7])
    assert (s["duplicates"], s["reordered"], s["lost"]) == (1, 0, 0)
    s = feed([0, 1, 2, 2, 4, 5, 5, 7, 8, 9])  # 3 and 6 missing, 2 and 5 twice
    assert (s["received"], s["expected"], s["lost"], s["duplicates"], s["reordered"]) == (10, 10, 2, 2, 0)
    s = feed([0, 1, 2], [2, 1, 4], [3, 0])  # across batches: 2, 1, 0 again; 3 late
    assert (s["lost"], s["duplicates"], s["reordered"]) == (0, 3, 1)


def test_window_slides_and_older_arrivals_are_too_old():
    c = SeqChecker(window=8)
    for b in ([0, 1, 2], [5, 6], [20], [6], [15, 14], [3]):  # 6 now old (<= 20 - 8); 15, 14 late but new
        c.update(np.array(b, dtype=np.uint64))
    s = c.summary()
    assert (s["too_old"], s["duplicates"], s["expected"]) == (2, 0, 21)
    assert s["lost"] == 21 - 10  # 0 1 2 5 6 20 15 14 counted once each, the too-old 6 and 3 as well
    assert s["reordered"] == 4  # 6, 15, 14, 3 came after a higher number
    c.update(np.array([15, 21, 21], dtype=np.uint64))  # 15 again, inside the window: a duplicate
    assert (c.duplicates, c.lost) == (2, 0 + 22 - 11)


def test_matches_a_set_model_on_random_streams():
    rng = np.random.default_rng(4)
    for _ in range(30):
        n = int(rng.integers(1, 400))
        stream = rng.integers(0, n, size=int(n * 1.2)) + 1000
        c, seen, dups = SeqChecker(window=1 << 12), set(), 0
        for chunk in np.array_split(stream, int(rng.integers(1, 9))):
            c.update(chunk.astype(np.uint64))
        first = int(stream[0])
        for x in stream.tolist():
            dups += x in seen and x >= first
            seen.add(x)
        expected = int(stream.max()) - first + 1
        assert c.duplicates == dups
        assert c.lost == expected - len({x for x in seen if x >= first})


def test_empty_batches_change_nothing():
    assert feed([], [])["received"] == 0 and feed([])["expected"] == 0
