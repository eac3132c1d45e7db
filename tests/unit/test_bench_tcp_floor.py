"""bench/tcp_vs_kernel.py's per-run ratios (each run's pair against that run's anchor) and its per-core busy share."""

from __future__ import annotations

from tests.kb import bench_script


def _bench():
    return bench_script("tcp_vs_kernel")


def test_per_run_ratios_pair_each_run_with_its_own_anchor_and_skip_failed_trials():
    bench = _bench()
    runs = {"pingpong sockperf server --tcp (kernel)": [{"p50_us": 30.0}, {"p50_us": 5.0}, {"error": "x"}],
            "pingpong floor: XDP answers": [{"p50_us": 3.0}, {"p50_us": 3.5}, {"p50_us": 3.4}],
            "pingpong kbypass server --tcp": [{"error": "timeout"}, {"p50_us": 15.0}, {"p50_us": 14.0}]}
    got = bench._per_run_ratios(runs)
    assert got["pingpong p50 floor (XDP answers) / sockperf kernel"] == [0.1, 0.7, None]
    assert got["pingpong p50 kbypass / sockperf kernel"] == [None, 3.0, None]
    assert "pingpong p50 floor, client busy / kernel best (busy poll)" not in got  # neither side ran


def test_http_per_run_ratios_and_their_median_over_runs():
    bench = _bench()
    runs = {"http kbypass": [{"requests_per_s": 100.0}, {"requests_per_s": 40.0}, {"requests_per_s": 90.0}],
            "http uvloop": [{"requests_per_s": 50.0}, {"requests_per_s": 80.0}, {"error": "x"}]}
    got = bench._per_run_ratios(runs)
    assert got["http req/s kbypass / uvloop"] == [2.0, 0.5, None]
    assert "http req/s kbypass / nginx" not in got
    assert bench._median_per_run(got)["http req/s kbypass / uvloop"] == 1.25


def test_core_busy_is_the_busy_share_of_one_cpus_ticks():
    bench = _bench()
    before, after = {0: (10, 0, 100), 1: (0, 0, 100)}, {0: (85, 5, 200), 1: (30, 0, 200)}
    assert bench.core_busy(before, after, 0) == 0.75
    assert bench.core_busy(before, after, 1) == 0.30


def test_a_disturbed_trial_is_taken_again_and_the_least_disturbed_kept():
    bench = _bench()
    others = iter([2.0, 0.9, 1.5])

    def trial():
        return {"requests_per_s": 1.0, "others_cpu_s": next(others)}

    got = bench.undisturbed(trial, 3.0, 0.15, 2)  # the bound: 0.45 CPU seconds over 3 s
    assert got["others_cpu_s"] == 0.9 and got["disturbed"] and got["retried"] == 1
    calm = iter([0.1, 5.0])
    got = bench.undisturbed(lambda: {"others_cpu_s": next(calm)}, 3.0, 0.15, 2)
    assert got == {"others_cpu_s": 0.1, "retried": 0, "disturbed": False}  # not taken again
    assert bench.undisturbed(lambda: {"p50_us": 5.0}, 3.0, 0.15, 2) == {"p50_us": 5.0}  # no measure: as it is

    def failing():
        raise RuntimeError("wrk printed no Requests/sec")

    assert bench.undisturbed(failing, 3.0, 0.15, 2) == {"error": "wrk printed no Requests/sec"}


def test_undisturbed_per_run_ratios_leave_out_runs_where_either_side_was_disturbed():
    bench = _bench()
    runs = {"http kbypass": [{"requests_per_s": 100.0}, {"requests_per_s": 40.0, "disturbed": True},
                             {"requests_per_s": 90.0, "disturbed": False}],
            "http uvloop": [{"requests_per_s": 50.0, "disturbed": False}, {"requests_per_s": 80.0},
                            {"requests_per_s": 60.0, "disturbed": True}]}
    assert bench._per_run_ratios(runs, undisturbed=True)["http req/s kbypass / uvloop"] == [2.0, None, None]
    assert bench._per_run_ratios(runs)["http req/s kbypass / uvloop"] == [2.0, 0.5, 1.5]
    assert bench._medians({"x": [{"a": 1.0, "disturbed": True}, {"a": 3.0, "disturbed": False}]}) == {"x": {"a": 2.0}}
