"""Host facilities: the netns testbed, NAPI placement, tuning knobs, interface statistics, doctor."""
