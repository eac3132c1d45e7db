"""`kbypass bench rx`'s field: the C rx-drop limit rows (kbypass.bench.rxdrop) in every run, the sink rows with
their sequence check on, and the same-run ratio sink / C."""

from types import SimpleNamespace

import pytest

from kbypass.bench import rx, rxdrop

B = SimpleNamespace(iface="kb-b", netns="kb-b", ipv4="10.77.0.2")


def test_the_field_has_both_c_rows_and_the_sink_checks_sequence(monkeypatch):
    monkeypatch.setattr(rxdrop, "built", lambda: True)
    field = {c.name: c for c in rx.rows(B)}
    assert [n for n in rx.ORDER if n in field] == list(field)  # table order
    assert "--check-seq" in field[rx.AFXDP].argv
    assert field[rx.C_RXDROP].program == "attached" and field[rx.C_RXDROP_BARE].program == "libxdp"
    assert field[rx.C_RXDROP].rule == f"udp dst {B.ipv4} dport 4321"  # the sink's rule, the same program
    argv = rxdrop.argv(B, "attached")
    assert argv[0] == str(rxdrop.BINARY) and argv[argv.index("--netns") + 1] == "kb-b"
    assert argv[argv.index("--batch") + 1] == "64" and argv[argv.index("--cpu") + 1] == "1"
    with pytest.raises(ValueError, match="program"):
        rxdrop.argv(B, "xdp-filter")


def test_without_the_binary_the_rows_are_left_out(monkeypatch):
    monkeypatch.setattr(rxdrop, "built", lambda: False)
    assert not [c for c in rx.rows(B) if c.name.startswith("AF_XDP C")]


def test_sink_over_c_is_per_run_then_the_median():
    trials = [{"run": r, "name": n, "pps": p} for r, n, p in
              [(0, rx.AFXDP, 1.8), (0, rx.C_RXDROP, 2.0), (1, rx.AFXDP, 2.2), (1, rx.C_RXDROP, 2.0),
               (2, rx.AFXDP, 1.0), (2, rx.C_RXDROP, 2.0), (3, rx.AFXDP, 5.0)]]  # run 3: no C row, no ratio
    r = rx._ratio(trials, rx.AFXDP, rx.C_RXDROP)
    assert r["per_run"] == pytest.approx([0.9, 1.1, 0.5]) and r["median"] == pytest.approx(0.9)


def test_the_sequence_verdict_is_read_from_a_checking_sink_only():
    sink = SimpleNamespace(argv=["kbypass", "sink", "--check-seq"],
                           out='receiving on\n{"packets": 3, "seq": {"lost": 1}}\nbye')
    assert rx._seq_verdict(sink) == {"lost": 1}
    assert rx._seq_verdict(SimpleNamespace(argv=["xdp_rxdrop"], out='{"packets": 3}')) is None
    assert rx._seq_verdict(SimpleNamespace(argv=["sink", "--check-seq"], out="crashed")) is None
