"""XPS masks: CPU c transmits on queue c mod N, written in sysfs's bitmap format."""

from kbypass.host.xps import cpu_mask, masks


def test_cpu_c_goes_to_queue_c_mod_n() -> None:
    assert masks(2, cpus=2) == ["1", "2"]
    assert masks(2, cpus=4) == ["5", "a"]  # CPUs 0, 2 and 1, 3
    assert masks(3, cpus=2) == ["1", "2", "0"]  # a queue no CPU maps to sends nothing of its own
    assert masks(1, cpus=3) == ["7"]


def test_masks_past_32_cpus_are_grouped_as_bitmap_parse_reads_them() -> None:
    assert cpu_mask({0, 40}) == "100,00000001"
    assert cpu_mask({32}) == "1,00000000"
    assert cpu_mask(set()) == "0"
