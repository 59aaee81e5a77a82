"""A first-word-fall-through FIFO read straight from distributed RAM, with no output register.

Why not ``SyncFIFOBuffered``: its head entry sits in a fabric register loaded on every read. For
the systolic array's result rows that register is C x 32 bits wide, and the net that enables it
was the 8x8 array's critical path (one LUT, then 8.4 ns of routing to 265 flip-flops; yosys and
nextpnr do not duplicate high-fanout nets). Why not block RAM: an ECP5 DP16KD read without its
output register (yosys never enables it) takes 6.2 ns from the clock to the data, which caps
anything it feeds at about 110 MHz. Here the storage is LUT RAM read asynchronously at the read
pointer: the pointer and the write enable come straight from flip-flops, so no wide net has
logic in front of it.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["LutRamFifo"]


class LutRamFifo(wiring.Component):
    """`depth` entries; ``r`` offers the oldest entry the cycle after it was written.

    ``w.valid`` is the RAM's write enable with no gate in front of it (it reaches every RAM cell):
    the writer offers a beat only when it knows there is room, as the credit-counting writers here
    do, and drives ``w.valid`` and ``w.payload`` from registers. ``w.ready`` says whether there is
    room; a beat offered without room overwrites the oldest entry."""

    LATENCY = 1  # a written entry is offered on `r` in the next cycle

    def __init__(self, shape, depth: int):
        if depth < 1:
            raise ValueError(f"LutRamFifo depth must be at least 1, got {depth}")
        self._shape, self._depth = shape, depth
        super().__init__({"w": In(stream.Signature(shape)), "r": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        depth = self._depth
        m.submodules.mem = mem = Memory(shape=self._shape, depth=depth, init=[])
        wp, rp = mem.write_port(), mem.read_port(domain="comb")
        w_ptr, r_ptr = Signal(range(depth)), Signal(range(depth))
        level = Signal(range(depth + 1))

        def next_ptr(ptr):
            return Mux(ptr == depth - 1, 0, ptr + 1)

        write = self.w.valid
        read = self.r.valid & self.r.ready
        m.d.comb += [
            self.w.ready.eq(level != depth),
            wp.addr.eq(w_ptr), wp.data.eq(self.w.payload), wp.en.eq(write),
            rp.addr.eq(r_ptr), self.r.payload.eq(rp.data), self.r.valid.eq(level != 0),
        ]
        m.d.sync += level.eq(level + write - read)
        with m.If(write):
            m.d.sync += w_ptr.eq(next_ptr(w_ptr))
        with m.If(read):
            m.d.sync += r_ptr.eq(next_ptr(r_ptr))
        return m
