"""A timing shell: a unit behind a serial pin ring, so place and route measures the unit itself.

A unit's ports are far wider than an FPGA package (the top has about 700 port bits; an
LFE5U-85F in CABGA381 has 205 I/Os). The shell registers every input bit from a shift register
fed by one pin and captures every output bit into a shift register read out on another, so every
path through the unit starts and ends at a flip-flop, the clock is promoted to a global net as in
a real design, and fmax after place and route is the unit's own.
"""

from amaranth import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["TimingShell"]


class TimingShell(wiring.Component):
    si: In(1)
    load: In(1)
    so: Out(1)

    def __init__(self, unit: wiring.Component):
        self.unit = unit
        super().__init__()

    @property
    def config(self):
        return self.unit.config

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self.unit
        ins, outs = [], []
        for path, member, value in unit.signature.flatten(unit):
            (ins if member.flow == wiring.In else outs).append(Value.cast(value))
        width_in = sum(len(v) for v in ins)
        width_out = sum(len(v) for v in outs)
        chain = Signal(max(width_in, 1))
        held = Signal(max(width_in, 1))
        m.d.sync += chain.eq(Cat(self.si, chain[:-1]))
        with m.If(self.load):
            m.d.sync += held.eq(chain)
        offset = 0
        for value in ins:
            m.d.comb += value.eq(held[offset:offset + len(value)])
            offset += len(value)
        capture = Signal(max(width_out, 1))
        with m.If(self.load):
            m.d.sync += capture.eq(Cat(*outs))
        with m.Else():
            m.d.sync += capture.eq(capture >> 1)
        m.d.comb += self.so.eq(capture[0])
        return m
