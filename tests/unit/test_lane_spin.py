"""Busy polling's wait (kbypass.endpoint.base.spin_lanes, kbypass._fastlane.spin over C lanes): it returns
True as soon as a frame is on one of the lanes' RX rings, the frame still there for the receive, and False
after the time given when none came; both lanes (C and Python, which looks once)."""

from __future__ import annotations

import time

import pytest

from kbypass.endpoint.base import spin_lanes
from kbypass.port import lane as lane_mod
from tests.unit.test_endpoint_lane import fake_port, plain_udp, udp_frame

NATIVE = [True, False] if lane_mod.native_default() else [False]


@pytest.mark.parametrize("native", NATIVE)
def test_spin_sees_a_frame_on_any_lane_and_times_out_without(native):
    ports = [fake_port("busy"), fake_port("busy")]
    lanes = [p.message_lane(plain_udp(), native=native) for p in ports]
    try:
        t = time.monotonic()
        assert spin_lanes(lanes, 0.02) is False
        if native:  # C spins for the time given; Python looks once and leaves the loop to its caller
            assert time.monotonic() - t >= 0.02
        frame = udp_frame(b"x" * 20)
        ports[1].xsk.deliver([frame])
        t = time.monotonic()
        assert spin_lanes(lanes, 5.0) is True
        assert time.monotonic() - t < 1.0  # at once, not at the end of the 5 s
        assert lanes[0].receive_udp() is None and lanes[1].receive_udp() is not None  # left for the receive
    finally:
        for lane, port in zip(lanes, ports):
            lane.close()
            port.close()
