"""cocotb drivers and monitors for Amaranth ``lib.stream`` ports (``<name>__valid/ready/payload``).

They only move words; checking belongs to the testbench, except that a sink fails on a beat beyond
the count it was told to expect. Both take an ``idle`` probability that inserts random gaps
(source) or random back-pressure (sink) every cycle, and they record the cycle of every handshake
so testbenches can measure latency and throughput. ``sim.pysim`` is the same for Amaranth's simulator.
"""

import random

from cocotb.triggers import RisingEdge
from cocotb.utils import get_sim_time

__all__ = ["ClockCounter", "StreamSource", "StreamSink", "DRAIN_CYCLES"]

# How long a sink keeps watching after its last expected beat: longer than any unit takes from one
# output beat to the next once its input has ended.
DRAIN_CYCLES = 64


class ClockCounter:
    """Cycle numbers of a clock with a fixed period, read from simulation time.

    Deriving them from time (not from a task counting edges) keeps every coroutine that wakes on
    the same edge in agreement, whatever order the scheduler runs them in.
    """

    def __init__(self, clk, period_ns):
        self.clk = clk
        self.period_ns = period_ns

    @property
    def now(self) -> int:
        return int(get_sim_time(unit="ns") // self.period_ns)


class _Endpoint:
    """The handles of one stream port and the random idle pattern of the side we play."""

    def __init__(self, dut, name, clock: ClockCounter, idle, rng):
        self.name = name
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.clock = clock
        self.idle = idle
        self.rng = rng

    def _active(self) -> bool:
        """Whether to take part in a handshake this cycle (False with probability `idle`)."""
        return not (self.idle and self.rng.random() < self.idle)


class StreamSource(_Endpoint):
    """Offers payload words on a stream, honouring ``ready``; `accepted_at` logs each handshake."""

    def __init__(self, dut, name, clock: ClockCounter, idle=0.0, rng=None):
        super().__init__(dut, name, clock, idle, rng or random.Random(0))
        self.accepted_at = []
        self.valid.value = 0

    async def send(self, words):
        edge = RisingEdge(self.clock.clk)
        i, n = 0, len(words)
        offered = None
        while i < n:
            offering = self._active()
            self.valid.value = int(offering)
            if offering and offered != i:
                self.payload.value = words[i]
                offered = i
            await edge  # ready as the flops saw it on this edge
            if offering and self.ready.value:
                self.accepted_at.append(self.clock.now)
                i += 1
        self.valid.value = 0


class StreamSink(_Endpoint):
    """Takes payload words from a stream, with random back-pressure; `received_at` logs each handshake.

    ``receive(count)`` takes exactly `count` words, then holds ``ready`` high for `drain` cycles
    and fails if the stream offers one more.
    """

    def __init__(self, dut, name, clock: ClockCounter, idle=0.0, rng=None):
        super().__init__(dut, name, clock, idle, rng or random.Random(1))
        self.words = []
        self.received_at = []
        self.ready.value = 0

    async def receive(self, count, drain=DRAIN_CYCLES):
        edge = RisingEdge(self.clock.clk)
        while len(self.words) < count:
            taking = self._active()
            self.ready.value = int(taking)
            await edge
            if taking and self.valid.value:
                self.words.append(self.payload.value.to_unsigned())
                self.received_at.append(self.clock.now)
        self.ready.value = 1
        for _ in range(drain):
            await edge
            if self.valid.value:
                raise AssertionError(f"{self.name}: an extra beat ({self.payload.value.to_unsigned():#x}) after the "
                                     f"{count} expected, at cycle {self.clock.now}")
        self.ready.value = 0
