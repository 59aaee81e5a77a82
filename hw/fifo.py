"""A first-word-fall-through FIFO in distributed RAM, built to keep every wide net short.

Why not ``SyncFIFOBuffered``: its head entry sits in a fabric register loaded on every read. For
the systolic array's result rows that register is C x 32 bits wide, and the net that enables it
was the 8x8 array's critical path (one LUT, then 8.4 ns of routing to 265 flip-flops; yosys and
nextpnr do not duplicate high-fanout nets). Why not block RAM: an ECP5 DP16KD read without its
output register (yosys never enables it) takes 6.2 ns from the clock to the data, which caps
anything it feeds at about 110 MHz. Why slices: one RAM read asynchronously at one read pointer
still fans that pointer out to every RAM cell (12 ns of routing at 12x12). So the payload is cut
into slices of at most `SLICE_BITS` bits, each its own module with its own RAM, pointers and
input register; the slices move in lockstep, and no net reaches more than one slice's cells.

The slices are for placement and routing only. Elaborated for a platform whose ``fifo_slices`` is
false (rtl_gen.SimulationPlatform: sw.driver's simulation build of the top), a FIFO is one slice:
the same words in the same cycles, but Verilator evaluates every slice's pointers, level and RAM
at every clock edge, and the ~50 slices of the epilogue's FIFOs (the array's results, the
requantizer's, GELU's, the dout link's: ~300 bits each) were two fifths of the top's simulation
time (DeiT-Tiny's first block: 605k -> 1.0M cycles/s with the RTL alone, 8x8 top at e78cc45).
"""

from amaranth import Module, Mux, Shape, Signal, Value, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["LutRamFifo"]

SLICE_BITS = 36  # nine 16x4 LUT-RAM cells per 16 entries


class _Slice(wiring.Component):
    """One slice: a registered write into LUT RAM, read asynchronously at the read pointer."""

    def __init__(self, width: int, depth: int, zero_empty: bool):
        self._depth, self._zero_empty = depth, zero_empty
        super().__init__({"w_valid": In(1), "w_data": In(width),
                          "r_valid": Out(1), "r_ready": In(1), "r_data": Out(width)})

    def elaborate(self, platform):
        m = Module()
        depth = self._depth
        m.submodules.mem = mem = Memory(shape=unsigned(len(self.w_data)), depth=depth, init=[])
        wp, rp = mem.write_port(), mem.read_port(domain="comb")
        w_ptr, r_ptr = Signal(range(depth)), Signal(range(depth))
        level = Signal(range(depth + 1))
        # The write enable reaches every RAM cell of the slice: it comes straight from a register.
        write, data_r = Signal(), Signal.like(self.w_data)
        m.d.sync += [write.eq(self.w_valid), data_r.eq(self.w_data)]
        read = self.r_valid & self.r_ready

        def next_ptr(ptr):
            return Mux(ptr == depth - 1, 0, ptr + 1)

        # r_valid is a register, level != 0 (the reader's handshake logic starts from it). r_ready
        # comes from afar (the top's dout handshake reaches five unit FIFOs), so it only selects
        # among values computed from this slice's registers: one LUT to r_valid, where the adder
        # and zero compare after it took a carry chain and three LUT levels (the 8x8 top's
        # critical path, busy -> dout's ready -> a result FIFO's r_valid, 87.4 MHz).
        up, down = write & ~read, read & ~write
        r_valid = Signal()
        m.d.comb += [wp.addr.eq(w_ptr), wp.data.eq(data_r), wp.en.eq(write),
                     rp.addr.eq(r_ptr), self.r_valid.eq(r_valid),
                     self.r_data.eq(Mux(r_valid, rp.data, 0) if self._zero_empty else rp.data)]
        m.d.sync += [level.eq(Mux(up, level + 1, Mux(down, level - 1, level))),
                     r_valid.eq(up | Mux(down, level >= 2, r_valid))]
        with m.If(write):
            m.d.sync += w_ptr.eq(next_ptr(w_ptr))
        with m.If(read):
            m.d.sync += r_ptr.eq(next_ptr(r_ptr))
        return m


class LutRamFifo(wiring.Component):
    """`depth` entries; ``r`` offers an entry two cycles after ``w`` offered it.

    ``w`` has no ``ready`` gate: the writer offers a beat only when it knows there is room, as
    the credit-counting writers here do (a beat offered without room overwrites the oldest
    entry). ``w.ready`` is therefore constant 1 and only there to make ``w`` a stream.

    With `zero_empty`, ``r.payload`` is 0 while ``r.valid`` is low (each slice ANDs its own
    ``r_valid`` register into its bits), so FIFOs of which at most one holds data at a time can
    share a reader through an OR of their outputs, with no select net reaching every bit.
    """

    LATENCY = 2  # the input register, then the RAM write; the entry is read asynchronously

    def __init__(self, shape, depth: int, zero_empty: bool = False):
        if depth < 1:
            raise ValueError(f"LutRamFifo depth must be at least 1, got {depth}")
        self._width, self._depth, self._zero_empty = Shape.cast(shape).width, depth, zero_empty
        super().__init__({"w": In(stream.Signature(shape)), "r": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        w_bits, r_bits = Value.cast(self.w.payload), Value.cast(self.r.payload)
        slices = []
        slice_bits = SLICE_BITS if getattr(platform, "fifo_slices", True) else self._width
        for i, lo in enumerate(range(0, self._width, slice_bits)):
            hi = min(lo + slice_bits, self._width)
            m.submodules[f"slice_{i}"] = s = _Slice(hi - lo, self._depth, self._zero_empty)
            m.d.comb += [s.w_valid.eq(self.w.valid), s.w_data.eq(w_bits[lo:hi]), s.r_ready.eq(self.r.ready),
                         r_bits[lo:hi].eq(s.r_data)]
            slices.append(s)
        m.d.comb += [self.w.ready.eq(1), self.r.valid.eq(slices[0].r_valid)]
        return m
