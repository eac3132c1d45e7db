"""Congestion control by a model of the path (BBR, Cardwell et al., ACM Queue 2016; draft-cardwell-iccrg-bbr
-congestion-control): the bottleneck bandwidth (the highest delivery rate seen over the last ten rounds) and
the round-trip propagation time (the lowest RTT seen over ten seconds), not loss, set how fast we send.

Why here: on the paths this transport runs on, loss is mostly random (a sampling drop, a ring overrun),
and any controller that reads loss as congestion either collapses under it (Reno: a window of
~sqrt(2/p) segments) or must guess a loss-rate threshold (LossTolerantReno, congestion.py: cuts once the
recent rate passes 2%, so 5% random loss costs it most of the link). A model of the bottleneck is not
moved by random loss: the delivery rate falls by the loss share at most, the max filter keeps the peak.
Pacing at the measured rate keeps the sending rate at what the bottleneck delivers, and the flight is
capped at `CWND_GAIN` bandwidth-delay products, so a sender that bursts leaves at most about one BDP
queued. Flows that share a deep bottleneck converge to equal shares through the gain cycle (each probes
at 1.25x for a round, then drains at 0.75x: a flow above its share loses more in the drain than it gains
in the probe) and PROBE_RTT (all flows empty the queue together, so each sees the true propagation
time). Behind a shallower queue that is not enough: the max-filtered rates of several flows add up to
more than the link, their windows to more than the path holds, and the queue overflows for good (before
the rule below, four flows behind 10 datagrams lost 10% and one kept 97% of the link); there loss backs
it off, as BBRv2 does (see "loss" below).

The state machine is BBR's: STARTUP (pacing gain 2/ln 2, until three rounds without 25% growth), DRAIN
(empty the queue STARTUP made), PROBE_BW (the eight-phase gain cycle), PROBE_RTT (every ten seconds
without a new minimum: four segments in flight for 200 ms). Differences, and why:

* delivery rate: bytes newly delivered (cumulatively acked or SACKed) over the last RTT of ACK arrivals,
  not per-packet send/ack intervals: it needs no state per segment on the sender's hot path. Samples
  taken while the sender had nothing to send (app- or peer-window-limited) only ever raise the estimate;
* rounds are timed by the smoothed RTT, not by packet delivery;
* ACK aggregation (BBR's extra_acked, as in Linux since 4.19): the receiver acknowledges a whole batch
  of arrivals at once (one ACK per loop turn of a CPU-bound endpoint), and the window holds the largest
  excess of such a burst over the model, or the flight would stall between batches;
* loss: random loss does not move the model, as in BBR v1 (Linux's tcp_bbr); loss is congestion, as
  in BBRv2, when a round loses more than 2% of its data while the RTT shows a standing queue (on_loss).
  Then the flight is capped (BBRv2's inflight_hi) at 0.7 of what was in flight, and the cap grows back
  by one segment a round while the queue stands (additive increase, multiplicative decrease: flows
  behind one queue converge to equal caps, as Reno's windows do), faster once the RTT shows none; while
  capped, the pacer follows the window (1.25 windows a round trip, as Linux paces Reno) so that a flow
  whose rate estimate is below its share can grow into its cap. Random loss costs little: it cuts only
  while a queue stands (BBR's own, at most a BDP), the cap falls no further once the queue is gone (the
  pipe still full) and grows back fast from there (sim_flows, one flow, 1% and 5% random loss: 0.94
  and 0.91 of what the loss leaves of the link). On a path shorter than RTT_FLOOR (the veth testbed)
  the RTT rises with any load (the endpoints' wake-ups and batches), so it cannot tell the two apart:
  there only STARTUP reads loss as congestion, and flows share the endpoints' CPU, not a queue. A
  retransmission timeout restarts from one segment (the connection's Eifel check undoes a spurious one).
"""

from __future__ import annotations

import math
import random
from collections import deque

STARTUP, DRAIN, PROBE_BW, PROBE_RTT = "startup", "drain", "probe_bw", "probe_rtt"
HIGH_GAIN = 2 / math.log(2)  # 2.885: doubles the delivery rate each round in STARTUP
CWND_GAIN = 2.0
CYCLE = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BW_ROUNDS = 10  # the bandwidth max filter's window, in rounds
RTT_WINDOW = 10.0  # seconds a min RTT sample stays valid before PROBE_RTT re-measures it
PROBE_RTT_TIME = 0.2
MIN_SEGMENTS = 4
# The round trip the window is sized for is at least this: an endpoint that is a process sharing its CPU
# sleeps in poll() (millisecond timeouts) and is descheduled for a slice now and then, so its ACKs can
# come a millisecond late whatever the wire's RTT. On veth the minimum RTT seen was 46 us; two transfers
# sharing two cores, with windows of two such BDPs, ran at half the rate of the loss-based controller.
RTT_FLOOR = 1e-3
LOSS_THRESH = 0.02  # a round losing more than this share of its data may be congested (BBRv2's 2%)
QUEUE_RTT = 1.25  # ... if the RTT is this much above the minimum: a queue stands, the loss is its overflow
CAPPED_PACING = 1.25
HI_CALM_ROUNDS = 4
BETA = 0.7  # the flight cap after congestive loss, a share of the flight (BBRv2's)
# Pacing bursts: up to this many seconds of the pacing rate go out at once. A sender loop that wakes every
# millisecond or so (an endpoint's poll, a batch of ACKs, a scheduler slice) must not lose its allowance
# between wake-ups. Measured on veth (xfer, 60 MB, 1% loss, four runs each on a busy machine): 5 ms gave
# 185-660 Mbit/s, 2 ms 156-324.
BURST_SECONDS = 5e-3
MAX_BURST = 512 * 1024
# ... and up to this many datagrams, where that is more than MAX_BURST (jumbo datagrams: 1 MiB of 64 KiB
# ones). The sender's every wake-up (pacer, ACK) costs a send of its own (frames taken, written, put on the
# TX ring, the kernel kicked: ~120 us of Python a send besides the copies), so its cost per byte falls with
# the burst; 8 jumbo datagrams a send was a quarter of the sender's CPU in that overhead. 32 (2 MiB of jumbo
# datagrams) since the receiver acknowledges every 2 MiB of them (xfer.sizing.default_config).
BURST_DATAGRAMS = 32


def _windowed_max(rounds: deque, now_round: int, value: float) -> float:
    """Add `value` to `rounds` ([round, max of that round], oldest first) and return the max of the last
    BW_ROUNDS rounds: BBR's max filters (the bottleneck rate, the ACK aggregation)."""
    if rounds and rounds[-1][0] == now_round:
        rounds[-1][1] = max(rounds[-1][1], value)
    else:
        rounds.append([now_round, value])
        while rounds[0][0] <= now_round - BW_ROUNDS:
            rounds.popleft()
    return max(v for _, v in rounds)


class Bbr:
    """The controller a Connection asks how much may be in flight (`cwnd`) and how fast to send
    (`pacing_rate`, bytes/s; the connection spends the allowance through `budget` and `spend`). Fed by
    `on_delivery` after every ACK that told something new. `on_ack`, `on_loss` and `on_timeout` keep the
    loss-based controllers' calls (congestion.py), so a connection holds either."""

    paced = True

    def __init__(self, mss: int, initial_window: int | None = None, max_window: int = 1 << 30,
                 rng: random.Random | None = None, now: float = 0.0) -> None:
        self.mss = mss
        self.max_window = max_window
        self.cwnd = min(initial_window if initial_window is not None else 10 * mss, max_window)
        self.ssthresh = max_window  # (kept for the connection's RTO undo; BBR has no slow-start threshold)
        self.in_recovery = False
        self.loss_events = 0
        self.lost_bytes = 0
        self._rng = rng or random.Random(0)
        self.mode = STARTUP
        self.pacing_gain = self.cwnd_gain = HIGH_GAIN
        self.btl_bw = 0.0  # bytes/s
        self._bw_rounds: deque[list] = deque()  # [round, max sample of that round], the last BW_ROUNDS
        self.min_rtt: float | None = None
        self._min_rtt_at = now
        self.round = 0
        self._round_start = now
        self._full_bw = 0.0
        self._full_bw_count = 0
        self.filled_pipe = False
        self._cycle_index = 0
        self._cycle_start = now
        self._probe_rtt_done: float | None = None
        self._probe_min: float | None = None
        self._delivered = 0
        self._acks: deque[tuple[float, int]] = deque()  # (arrival, delivered) of the last RTT of ACKs
        self._app_limited_until = 0  # delivered count below which samples are app-limited
        self._epoch_start: float | None = None  # ACK aggregation epoch
        self._epoch_acked = 0
        self._extra = deque()  # [round, max extra acked of that round]
        self.extra_acked = 0
        self._tokens = 0.0
        self._tokens_at = now
        self.pacing_rate = 0.0
        # loss that is congestion (see on_loss): the round's counts, and the flight cap it sets
        self._round_delivered = 0
        self._round_lost = 0
        self._inflight = 0
        self._last_rtt: float | None = None
        self._srtt: float | None = None
        self._round_min_rtt: float | None = None  # the lowest RTT sample of this round
        self.inflight_hi = float("inf")
        self._hi_cut_round = -1
        self._hi_growth = 0
        self.congestion_cuts = 0

    # ------------------------------------------------------------------ the model
    @property
    def bdp(self) -> float:
        """The pipe, by the model: the bottleneck's rate times the round trip, which here is at least
        RTT_FLOOR (see there)."""
        return self.btl_bw * max(self.min_rtt or 0.0, RTT_FLOOR)

    def on_delivery(self, now: float, delivered: int, inflight: int, srtt: float | None,
                    rtt: float | None, first_rtt: float | None = None) -> None:
        """An ACK said something new: `delivered` is the total bytes the peer has (cumulatively acked plus
        SACKed), `inflight` what is still out, `srtt`/`rtt` the smoothed RTT and this ACK's sample (None:
        none), `first_rtt` the lowest RTT the connection has seen (the handshake's, at first)."""
        newly = delivered - self._delivered
        if newly <= 0:
            return
        self._delivered = delivered
        self._round_delivered += newly
        self._inflight = inflight
        if rtt is not None:
            self._last_rtt = rtt
            self._round_min_rtt = rtt if self._round_min_rtt is None else min(self._round_min_rtt, rtt)
        if self.min_rtt is None and first_rtt is not None:
            # the handshake's RTT, taken before our own data queued anywhere: flows that start together
            # then agree on the path's RTT (one that took its first sample from data behind another's
            # startup burst would count that queue as path, and keep a window too large for its share)
            self.min_rtt, self._min_rtt_at = first_rtt, now
        if rtt is not None:
            if self.mode is PROBE_RTT and self._probe_rtt_done is not None:
                self._probe_min = rtt if self._probe_min is None else min(self._probe_min, rtt)
            if self.min_rtt is None or rtt <= self.min_rtt:
                self.min_rtt, self._min_rtt_at = rtt, now
        interval = max(srtt or 0.0, self.min_rtt or 0.0, 1e-5)
        if now - self._round_start >= interval:
            self.round += 1
            self._round_start = now
            self._new_round()
        self._sample_rate(now, delivered, interval)
        self._aggregation(now, newly)
        self._advance(now, inflight)
        self._set_cwnd(newly)
        self._srtt = srtt
        self._set_pacing()

    def _sample_rate(self, now: float, delivered: int, interval: float) -> None:
        acks = self._acks
        acks.append((now, delivered))
        while len(acks) > 2 and acks[1][0] <= now - interval:
            acks.popleft()
        t0, d0 = acks[0]
        if now - t0 < interval or d0 >= delivered:
            return
        rate = (delivered - d0) / (now - t0)
        if d0 < self._app_limited_until and rate < self.btl_bw:
            return  # the sender, not the path, limited it: it says nothing about the bottleneck
        self.btl_bw = _windowed_max(self._bw_rounds, self.round, rate)

    def _aggregation(self, now: float, newly: int) -> None:
        """extra_acked: how far ACKs ran ahead of the model's rate in one burst, max over BW_ROUNDS."""
        if self._epoch_start is None or self.btl_bw <= 0:
            self._epoch_start, self._epoch_acked = now, 0
            return
        expected = self.btl_bw * (now - self._epoch_start)
        if self._epoch_acked <= expected:
            self._epoch_start, self._epoch_acked = now, 0
            expected = 0.0
        self._epoch_acked += newly
        self.extra_acked = _windowed_max(self._extra, self.round, min(self._epoch_acked - expected, self.cwnd))

    def _new_round(self) -> None:
        queued = self._queued(self._round_min_rtt) and not self._short_path()
        self._round_delivered = self._round_lost = 0
        self._round_min_rtt = None
        if self.inflight_hi != float("inf") and self._hi_cut_round < self.round - 1:
            # no congestive loss last round: raise the cap again. While even the round's lowest RTT shows
            # a queue, by one segment a round (additive increase: with the multiplicative cut, flows that
            # share the queue converge to equal caps, as AIMD does); once no queue stands, the path has
            # room: faster each round (BBRv2's PROBE_UP), so a cap that random loss left too low is gone
            # within a few rounds.
            if queued or self._hi_growth < 0:
                self._hi_growth = min(self._hi_growth, 0) if queued else self._hi_growth + 1
                self.inflight_hi += self.mss
            else:
                self._hi_growth += 1
                self.inflight_hi += self.mss * (1 << min(self._hi_growth, 16))
            if self.inflight_hi >= self._model_window():
                self.inflight_hi = float("inf")
        if self.filled_pipe or not self._bw_rounds:
            return
        if self.btl_bw >= self._full_bw * 1.25:
            self._full_bw, self._full_bw_count = self.btl_bw, 0
            return
        self._full_bw_count += 1
        if self._full_bw_count >= 3:
            self.filled_pipe = True

    def _advance(self, now: float, inflight: int) -> None:
        if self.mode is STARTUP and self.filled_pipe:
            self.mode, self.pacing_gain, self.cwnd_gain = DRAIN, 1 / HIGH_GAIN, HIGH_GAIN
        if self.mode is DRAIN and inflight <= self.bdp:
            self._enter_probe_bw(now)
        if self.mode is PROBE_BW:
            self._cycle(now, inflight)
        if self.mode is not PROBE_RTT and self.min_rtt is not None and now - self._min_rtt_at > RTT_WINDOW:
            self.mode, self.pacing_gain, self.cwnd_gain = PROBE_RTT, 1.0, 1.0
            self._probe_rtt_done = None
            self._probe_min = None  # the minimum is re-measured while the queue is empty
        if self.mode is PROBE_RTT:
            if self._probe_rtt_done is None and inflight <= MIN_SEGMENTS * self.mss:
                self._probe_rtt_done = now + max(PROBE_RTT_TIME, self.min_rtt or 0.0)
            elif self._probe_rtt_done is not None and now >= self._probe_rtt_done:
                if self._probe_min is not None:
                    self.min_rtt = self._probe_min
                self._min_rtt_at = now
                if self.filled_pipe:
                    self._enter_probe_bw(now)
                else:
                    self.mode, self.pacing_gain, self.cwnd_gain = STARTUP, HIGH_GAIN, HIGH_GAIN

    def _enter_probe_bw(self, now: float) -> None:
        self.mode, self.cwnd_gain = PROBE_BW, CWND_GAIN
        # a random phase, never the drain one: flows that start together do not probe in step
        self._cycle_index = self._rng.choice([i for i in range(len(CYCLE)) if i != 1])
        self._cycle_start = now
        self.pacing_gain = CYCLE[self._cycle_index]

    def _cycle(self, now: float, inflight: int) -> None:
        gain = CYCLE[self._cycle_index]
        elapsed = now - self._cycle_start > (self.min_rtt or 0.0)
        bdp = self.bdp
        if gain > 1:
            done = elapsed and inflight >= gain * bdp
            done = done or now - self._cycle_start > 2 * (self.min_rtt or 0.0) + 1e-3  # a path that cannot take it
        elif gain < 1:
            done = elapsed or inflight <= bdp
        else:
            done = elapsed
        if done:
            self._cycle_index = (self._cycle_index + 1) % len(CYCLE)
            self._cycle_start = now
            self.pacing_gain = CYCLE[self._cycle_index]

    def _set_cwnd(self, newly: int) -> None:
        floor = MIN_SEGMENTS * self.mss
        if self.mode is PROBE_RTT:
            self.cwnd = max(floor, min(self.cwnd, floor))
            return
        if self.btl_bw <= 0 or self.min_rtt is None:
            self.cwnd = int(min(self.cwnd + newly, self.max_window, max(self.inflight_hi, floor)))  # no model yet: slow start
            return
        target = min(self._model_window(), self.inflight_hi)
        if self.filled_pipe:
            cwnd = min(self.cwnd + newly, target)
        elif self.cwnd < target:
            cwnd = self.cwnd + newly  # STARTUP: grow with every delivery up to the target, never cut
        else:
            cwnd = self.cwnd
        self.cwnd = int(min(max(cwnd, floor), self.max_window))

    def _set_pacing(self) -> None:
        if self.btl_bw > 0:
            rate = self.pacing_gain * self.btl_bw
            # STARTUP never paces below its current rate: samples lag the sending rate by a round
            if self.inflight_hi != float("inf") and self._srtt:
                # capped after congestion: the window rules (the caps are what converge to equal shares), the
                # pacer only spreads it over the round trip, with room to grow (Linux paces Reno at 1.2x)
                rate = max(rate, CAPPED_PACING * self.cwnd / self._srtt)
            self.pacing_rate = max(rate, self.pacing_rate) if self.mode is STARTUP else rate

    def start_pacing(self, now: float, srtt: float | None) -> None:
        """Before the first delivery sample: the initial window over the handshake's RTT, at STARTUP's gain."""
        if self.pacing_rate <= 0:
            self.pacing_rate = HIGH_GAIN * self.cwnd / max(srtt or 1e-3, 1e-5)
            self._tokens_at = now
            self._tokens = self._burst()

    def state(self) -> dict:
        """The model, for a summary: rates in bit/s, times in ms, sizes in bytes."""
        return {"mode": self.mode, "btl_bw_bps": round(self.btl_bw * 8), "min_rtt_ms": None if self.min_rtt is None
                else round(self.min_rtt * 1e3, 3), "cwnd": self.cwnd, "pacing_bps": round(self.pacing_rate * 8),
                "extra_acked": round(self.extra_acked), "congestion_cuts": self.congestion_cuts,
                "lost_bytes": self.lost_bytes}

    # ------------------------------------------------------------------ pacing
    def _model_window(self) -> float:
        """The flight the model asks for: cwnd_gain BDPs, the ACK aggregation allowance, three quanta."""
        return self.cwnd_gain * self.bdp + self.extra_acked + 3 * self._quantum()

    def _quantum(self) -> float:
        """What the window allows beyond the model per send (Linux's BBR: three TSO bursts of ~1 ms, at
        most 64 KiB each): room for the sender's batches, not for a queue."""
        return min(max(2 * self.mss, self.pacing_rate * 1e-3), 64 * 1024)

    def _burst(self) -> float:
        return min(max(2 * self.mss, self.pacing_rate * BURST_SECONDS), max(MAX_BURST, BURST_DATAGRAMS * self.mss))

    def budget(self, now: float) -> float:
        """Bytes the pacer lets go out now (a burst at most)."""
        if self.pacing_rate <= 0:
            return float(self.max_window)
        if now > self._tokens_at:
            self._tokens = min(self._tokens + (now - self._tokens_at) * self.pacing_rate, self._burst())
            self._tokens_at = now
        return self._tokens

    def spend(self, nbytes: int) -> None:
        self._tokens -= nbytes

    def next_send_time(self, now: float) -> float:
        """When the allowance will be half a burst (call after budget(now)): the sender wakes for a batch
        of datagrams, not for each (at 2 Gbit/s a datagram is due every 6 us; a loop that woke for each
        would send batches of one and spin, as poll() sleeps in whole milliseconds)."""
        if self.pacing_rate <= 0:
            return now
        need = max(self.mss, self._burst() / 2)
        return now + max(0.0, need - self._tokens) / self.pacing_rate

    def app_limited(self, inflight: int) -> None:
        """The sender stopped below cwnd with nothing to send (or the peer's window shut it): rate samples
        until this flight is delivered measure the application, not the path."""
        self._app_limited_until = self._delivered + max(inflight, 1)

    # ------------------------------------------------------------------ the loss-based controllers' calls
    def on_ack(self, acked: int, snd_una: int) -> None:
        """(cwnd moves in on_delivery)"""

    def on_loss(self, flight: int, snd_una: int, snd_nxt: int, lost: int = 0) -> bool:
        """`lost` bytes were deemed lost. Random loss does not move the model. Loss is congestion when
        both (a) more than LOSS_THRESH of this round's data (and at least a segment) was lost, as BBRv2
        says, and (b) the latest RTT shows a queue (_queued): the loss is its overflow (at 5% random loss
        (a) alone holds most rounds; an overflowing queue always has (b)). Then STARTUP ends and the
        flight is capped (inflight_hi) at BETA of what was in flight, at most once a round; the cap grows
        back in _new_round. Returns True when it cut.

        On a short path (_short_path) only in STARTUP, and not below one BDP plus the ACK aggregation
        allowance: a CPU-bound receiver keeps both (a) and (b) true under 1% random loss, and a cap
        there halved the rate in sim.measure_goodput (it needs more than a batch of 64 in flight)."""
        self.lost_bytes += lost
        self._round_lost += lost
        lost_share = self._round_lost / max(self._round_lost + self._round_delivered, 1)
        short = self._short_path()
        if ((short and self.filled_pipe) or lost_share <= LOSS_THRESH or self._hi_cut_round == self.round or self._round_lost < self.mss
                or not self._queued(self._last_rtt)):
            return False
        self._hi_cut_round = self.round
        self._hi_growth = 0 if short else -HI_CALM_ROUNDS
        self.congestion_cuts += 1
        self.loss_events += 1
        self.filled_pipe = True  # (in STARTUP: it overshot into a full queue; DRAIN empties it)
        floor = self.bdp + self.extra_acked + MIN_SEGMENTS * self.mss if short else MIN_SEGMENTS * self.mss
        self.inflight_hi = max(BETA * min(flight, max(self._inflight, self.cwnd)), floor)
        self.cwnd = int(max(min(self.cwnd, self.inflight_hi), MIN_SEGMENTS * self.mss))
        return True

    def _short_path(self) -> bool:
        """A path shorter than RTT_FLOOR (a LAN, the veth testbed): its RTT is the endpoints' wake-ups and
        batches more than any queue, so it cannot tell congestive loss from random loss in PROBE_BW."""
        return self.min_rtt is not None and self.min_rtt < RTT_FLOOR

    def _queued(self, rtt: float | None) -> bool:
        """Whether `rtt` says a queue stands on the path: QUEUE_RTT times the minimum, and RTT_FLOOR more
        (what an endpoint's wake-ups and batches add to a short path, see there: not a queue we can drain)."""
        return (rtt is not None and self.min_rtt is not None
                and rtt > self.min_rtt + max((QUEUE_RTT - 1) * self.min_rtt, RTT_FLOOR))

    def on_timeout(self, flight: int, snd_nxt: int) -> None:
        """A retransmission timeout: everything in flight may be gone; restart from one segment (the model
        stays, so the window grows back to it within a round)."""
        self.loss_events += 1
        self.cwnd = self.mss
