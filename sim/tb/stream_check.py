"""A check of the stream helpers themselves: ``Repeater`` emits every input beat `copies` times, so
a consumer told to expect one beat per input must notice the extra ones.

``tests/test_pysim.py`` runs it in Amaranth's simulator (``sim.pysim``); ``tests/test_streams_sim.py``
builds it with Verilator and runs the cocotb tests below, which check ``sim.streams.StreamSink``.
"""

import random

import cocotb
from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from sim.streams import StreamSink, StreamSource
from sim.tb.common import start

__all__ = ["Repeater", "COPIES", "WORDS"]


class Repeater(wiring.Component):
    """Each 8-bit beat of ``inp`` leaves on ``out`` `copies` times."""

    inp: In(stream.Signature(8))
    out: Out(stream.Signature(8))

    def __init__(self, copies: int):
        self.copies = copies
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        left = Signal(range(self.copies + 1))
        word = Signal(8)
        m.d.comb += [self.out.valid.eq(left != 0), self.out.payload.eq(word), self.inp.ready.eq(left == 0)]
        with m.If(self.inp.valid & self.inp.ready):
            m.d.sync += [word.eq(self.inp.payload), left.eq(self.copies)]
        with m.Elif(self.out.valid & self.out.ready):
            m.d.sync += left.eq(left - 1)
        return m


COPIES = 2  # of the Repeater the cocotb tests run on
WORDS = [3, 250, 17, 0, 99]


async def stream_words(dut, expect: int, idle: float):
    clock = await start(dut)
    rng = random.Random(cocotb.RANDOM_SEED)
    source = StreamSource(dut, "inp", clock, idle=idle, rng=random.Random(rng.random()))
    sink = StreamSink(dut, "out", clock, idle=idle, rng=random.Random(rng.random()))
    receiving = cocotb.start_soon(sink.receive(expect))
    await source.send(WORDS)
    await receiving
    return sink


@cocotb.test()
async def every_beat_expected(dut):
    """The sink told the true count receives every copy, in order."""
    sink = await stream_words(dut, COPIES * len(WORDS), 0.3)
    assert sink.words == [w for w in WORDS for _ in range(COPIES)], sink.words


@cocotb.test()
async def one_beat_too_many(dut):
    """The sink told one beat fewer fails on the last copy."""
    try:
        await stream_words(dut, COPIES * len(WORDS) - 1, 0.3)
    except AssertionError as err:
        assert "extra beat" in str(err), err
    else:
        raise AssertionError("the sink did not notice the extra beat")
