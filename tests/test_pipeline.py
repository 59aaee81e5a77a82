"""hw.pipeline.CreditLink: a FIFO written over long wires, its room counted at the writer; and
hw.fifo.LutRamFifo's zero_empty, on which the top's OR of its result FIFOs relies, and its
one-slice simulation form."""

import random

import pytest
from amaranth import Elaboratable, Fragment, Module, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.fifo import LutRamFifo
from hw.pipeline import CreditLink
from rtl_gen import SimulationPlatform
from sim.pysim import StreamBench

_rng = random.Random(3)
WORDS = [_rng.randrange(1 << 12) for _ in range(200)]


class Linked(wiring.Component):
    """`inp` offered to a CreditLink's sender, ready while it has room; the receiver's FIFO drives `out`."""

    inp: In(stream.Signature(unsigned(12)))
    out: Out(stream.Signature(unsigned(12)))

    def __init__(self, zero_empty: bool = False):
        self._zero_empty = zero_empty
        super().__init__()

    def elaborate(self, platform):
        m, receiver = Module(), Module()
        m.submodules.receiver = receiver
        link = CreditLink(m, receiver, self.out, self.inp.payload, "link", zero_empty=self._zero_empty)
        m.d.comb += [self.inp.ready.eq(link.room), link.offer.eq(self.inp.valid)]
        return m


@pytest.mark.parametrize("idle", [0.0, 0.3, 0.8])
def test_every_word_arrives_once_in_order_under_back_pressure(idle):
    """With the reader stalling up to 80 % of cycles the FIFO fills: a word sent without room
    would overwrite an unread one."""
    dut = Linked()
    bench = StreamBench(dut, seed=int(idle * 10))
    bench.send([(dut.inp, WORDS)], idle=idle / 2)
    sink = bench.receive(dut.out, len(WORDS), idle=idle)
    bench.run()
    assert sink.words == WORDS


def test_the_room_covers_the_round_trip():
    """A reader that always takes sees one word per cycle: DEPTH outlasts the credits' return."""
    dut = Linked()
    bench = StreamBench(dut)
    source = bench.send([(dut.inp, WORDS)])
    sink = bench.receive(dut.out, len(WORDS))
    bench.run()
    accepted = source.accepted_at(dut.inp)
    assert accepted == list(range(accepted[0], accepted[0] + len(WORDS)))
    assert sink.received_at == [a + LutRamFifo.LATENCY for a in accepted]


@pytest.mark.parametrize("zero_empty", [True, False])
def test_zero_empty_payload_is_zero_while_not_valid(zero_empty):
    """The monitor logs the payload of every cycle the FIFO offers nothing. Without zero_empty the
    RAM's stale entries show there, so the check can fail."""
    dut = Linked(zero_empty=zero_empty)
    bench = StreamBench(dut, seed=5)
    bench.send([(dut.inp, WORDS)], idle=0.5)
    sink = bench.receive(dut.out, len(WORDS), idle=0.5)
    idle_payloads = []

    async def monitor(ctx):
        async for _, _, valid, payload in ctx.tick().sample(dut.out.valid, dut.out.payload):
            if not valid:
                idle_payloads.append(payload)

    bench.sim.add_process(monitor)
    bench.run()
    assert sink.words == WORDS
    assert (set(idle_payloads) == {0}) == zero_empty


class _On(Elaboratable):
    """`inner` elaborated for `platform` (Amaranth's simulator elaborates with none)."""

    def __init__(self, inner, platform):
        self._inner, self._platform = inner, platform

    def elaborate(self, platform):
        return Fragment.get(self._inner, self._platform)


class Wide(wiring.Component):
    """A LutRamFifo of three slices (80 bits) between two streams, elaborated for `platform`."""

    inp: In(stream.Signature(unsigned(80)))
    out: Out(stream.Signature(unsigned(80)))

    def __init__(self, platform):
        self._platform = platform
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        fifo = LutRamFifo(unsigned(80), 6, zero_empty=True)
        m.submodules.fifo = _On(fifo, self._platform)
        wiring.connect(m, wiring.flipped(self.inp), fifo.w)
        wiring.connect(m, fifo.r, wiring.flipped(self.out))
        return m


def test_the_simulation_build_s_one_slice_fifo_is_the_same_fifo():
    """rtl_gen.SimulationPlatform builds a FIFO as one slice: the same words at the same cycles,
    and the same zero payload while empty, as the three slices synthesis gets."""
    words = [_rng.randrange(1 << 80) for _ in range(100)]
    runs = []
    for platform in (None, SimulationPlatform("generic")):
        slices = [name for _, name, _ in Fragment.get(LutRamFifo(unsigned(80), 6), platform).subfragments]
        assert slices == (["slice_0", "slice_1", "slice_2"] if platform is None else ["slice_0"])
        dut = Wide(platform)
        bench = StreamBench(dut, seed=7)
        # the writer has no ready: it is offered at most 6 words ahead of a reader that always takes
        source = bench.send([(dut.inp, words)], idle=0.2)
        sink = bench.receive(dut.out, len(words))
        payloads = []

        async def monitor(ctx, dut=dut, payloads=payloads):
            async for _, _, valid, payload in ctx.tick().sample(dut.out.valid, dut.out.payload):
                payloads.append((valid, payload))

        bench.sim.add_process(monitor)
        bench.run()
        assert sink.words == words
        runs.append((source.accepted_at(dut.inp), sink.received_at, payloads))
    assert runs[0] == runs[1]
