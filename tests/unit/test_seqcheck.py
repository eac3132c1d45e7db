import numpy as np

from kbypass.apps.seqcheck import SeqChecker


def feed(*batches):
    c = SeqChecker()
    for b in batches:
        c.update(np.array(b, dtype=np.uint64))
    return c.summary()


def test_in_order_stream():
    s = feed(range(0, 100), range(100, 250))
    assert s == {"received": 250, "expected": 250, "lost": 0, "reordered": 0, "first_seq": 0, "last_seq": 249}


def test_gaps_are_lost_and_late_arrivals_reordered():
    s = feed([10, 11, 14, 15], [12, 16, 17])  # 13 never comes; 12 comes late
    assert s["lost"] == 1 and s["reordered"] == 1 and s["expected"] == 8 and s["received"] == 7


def test_duplicates_count_as_reordered_within_a_batch():
    s = feed([5, 6, 6, 7])
    assert s["reordered"] == 1 and s["lost"] == 0


def test_empty_batches_change_nothing():
    assert feed([], [])["received"] == 0 and feed([])["expected"] == 0
