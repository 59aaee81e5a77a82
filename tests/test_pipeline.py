"""hw.pipeline.CreditLink: a FIFO written over long wires, its room counted at the writer."""

import random

import pytest
from amaranth import Module, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.fifo import LutRamFifo
from hw.pipeline import CreditLink
from sim.pysim import StreamBench

_rng = random.Random(3)
WORDS = [_rng.randrange(1 << 12) for _ in range(200)]


class Linked(wiring.Component):
    """`inp` offered to a CreditLink's sender, ready while it has room; the receiver's FIFO drives `out`."""

    inp: In(stream.Signature(unsigned(12)))
    out: Out(stream.Signature(unsigned(12)))

    def elaborate(self, platform):
        m, receiver = Module(), Module()
        m.submodules.receiver = receiver
        link = CreditLink(m, receiver, self.out, self.inp.payload, "link")
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
