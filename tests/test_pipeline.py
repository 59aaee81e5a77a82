"""hw.pipeline.register_slice in Amaranth's simulator: every beat once and in order under random gaps
and back-pressure, one beat a cycle when nothing stalls, and both handshakes from registers."""

import random

import pytest
from amaranth import Module, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.pipeline import register_slice


class Slice(wiring.Component):
    inp: In(stream.Signature(unsigned(16)))
    out: Out(stream.Signature(unsigned(16)))

    def elaborate(self, platform):
        m = Module()
        register_slice(m, self.inp, self.out, "slice")
        return m


@pytest.mark.parametrize("p_valid,p_ready", [(1.0, 1.0), (0.6, 0.5), (1.0, 0.3), (0.3, 1.0)])
def test_every_beat_once_in_order_and_the_handshakes_are_registers(p_valid, p_ready):
    dut, rng = Slice(), random.Random(int(100 * p_valid + 10 * p_ready))
    beats = [rng.randrange(1 << 16) for _ in range(300)]
    got, cycles = [], []

    async def bench(ctx):
        sent = cycle = 0
        offer = False
        while len(got) < len(beats):
            offer = sent < len(beats) and (offer or rng.random() < p_valid)  # a valid beat stays offered
            ctx.set(dut.inp.valid, offer)
            ctx.set(dut.inp.payload, beats[sent] if offer else 0)
            ready = rng.random() < p_ready
            ctx.set(dut.out.ready, not ready)
            ready_in, valid_out = ctx.get(dut.inp.ready), ctx.get(dut.out.valid)
            ctx.set(dut.out.ready, ready)
            ctx.set(dut.inp.valid, not offer)
            # neither handshake answers the other side combinationally
            assert ctx.get(dut.inp.ready) == ready_in and ctx.get(dut.out.valid) == valid_out
            ctx.set(dut.inp.valid, offer)
            taken, given = offer and ctx.get(dut.inp.ready), ctx.get(dut.out.valid) and ctx.get(dut.out.ready)
            if given:
                got.append(ctx.get(dut.out.payload))
            await ctx.tick()
            cycle += 1
            if taken:
                sent, offer = sent + 1, False
        cycles.append(cycle)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == beats
    if p_valid == p_ready == 1.0:
        assert cycles[0] == len(beats) + 1  # one beat a cycle, one cycle of latency
