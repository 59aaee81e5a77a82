"""Pipelines between two ``lib.stream`` interfaces.

``CreditPipeline`` (every unit's output pipeline): registers without an enable, an output FIFO,
and an input taken only while the FIFO has a slot for every beat in flight. ``StallPipeline``:
a chain of registers that all advance on one enable, moving when the output is empty or being
taken (``en = ~out.valid | out.ready``), with the input ready exactly then; memory read ports
inside it take ``en`` so their data holds during a stall. Both stream one beat per cycle and drop
nothing under back-pressure; the stall-together form costs no FIFO but its enable reaches every
register, so it is kept for short, narrow stages.
"""

from amaranth import Signal, Value

from .fifo import LutRamFifo

__all__ = ["StallPipeline", "CreditPipeline"]


class StallPipeline:
    """`depth` register stages from stream `inp` to stream `out`; beats leave `depth` cycles after
    they are accepted (unstalled). `valid(i)` is the valid bit of stage i (0 = the input)."""

    def __init__(self, m, inp, out, depth: int, name: str = "pipe"):
        self.m, self.depth = m, depth
        self.en = Signal(name=f"{name}_en")
        self._valid = [inp.valid & inp.ready] + [Signal(name=f"{name}_valid_{i + 1}") for i in range(depth)]
        m.d.comb += [self.en.eq(~out.valid | out.ready), inp.ready.eq(self.en)]
        with m.If(self.en):
            m.d.sync += [self._valid[i + 1].eq(self._valid[i]) for i in range(depth)]
        self.out_valid = self._valid[-1]

    def valid(self, stage: int) -> Value:
        return self._valid[stage]

    def reg(self, value, name: str, shape=None) -> Signal:
        """`value` registered into the next stage (moves only with the pipeline)."""
        if shape is None:  # keep a View's layout (Value.cast would flatten it to plain bits)
            shape = value.shape() if hasattr(value, "shape") else Value.cast(value).shape()
        r = Signal(shape, name=name)
        with self.m.If(self.en):
            self.m.d.sync += r.eq(value)
        return r


class CreditPipeline:
    """`depth` register stages that never stall, from stream `inp` to stream `out` through a FIFO.

    A StallPipeline's enable reaches every register and memory read port of its unit: in a
    requantizer that is about a thousand flip-flops, and the routing of that one net, not logic,
    limits the clock. Here the registers have no enable. A beat is accepted only while the beats
    already accepted and not yet read out of the FIFO (`claimed`, a register compared with a
    constant) leave it a FIFO slot, so back-pressure on `out` lowers `inp.ready` and nothing is
    dropped. The unit drives `result` (the out payload) from its last stage; `push` (default 1)
    says which last-stage beats are results, the rest give their slot back. Beats leave `depth`
    + FIFO_LATENCY cycles after they are accepted, one per cycle when `out` keeps up.
    """

    FIFO_LATENCY = LutRamFifo.LATENCY

    def __init__(self, m, inp, out, depth: int, name: str = "pipe"):
        self.m, self.depth = m, depth
        # depth + FIFO_LATENCY beats are in flight when `out` takes one per cycle; one more slot
        # covers the cycle `claimed` needs to see a read.
        capacity = depth + self.FIFO_LATENCY + 1
        m.submodules[f"{name}_fifo"] = fifo = LutRamFifo(out.payload.shape(), capacity)
        self.result = fifo.w.payload
        self.push = Signal(init=1, name=f"{name}_push")
        claimed = Signal(range(capacity + 1), name=f"{name}_claimed")
        m.d.comb += inp.ready.eq(claimed < capacity)
        self._valid = [inp.valid & inp.ready] + [Signal(name=f"{name}_valid_{i + 1}") for i in range(depth)]
        m.d.sync += [self._valid[i + 1].eq(self._valid[i]) for i in range(depth)]
        self.out_valid = self._valid[-1]
        read = out.valid & out.ready
        dropped = self.out_valid & ~self.push
        m.d.sync += claimed.eq(claimed + self._valid[0] - read - dropped)
        m.d.comb += [fifo.w.valid.eq(self.out_valid & self.push),
                     out.valid.eq(fifo.r.valid), out.payload.eq(fifo.r.payload), fifo.r.ready.eq(out.ready)]

    def reg(self, value, name: str, shape=None) -> Signal:
        """`value` registered into the next stage."""
        if shape is None:  # keep a View's layout (Value.cast would flatten it to plain bits)
            shape = value.shape() if hasattr(value, "shape") else Value.cast(value).shape()
        r = Signal(shape, name=name)
        self.m.d.sync += r.eq(value)
        return r

    def delay(self, value, stages: int, name: str):
        """`value` `stages` stages later; a Python int (a constant) stays as it is."""
        for stage in range(0 if isinstance(value, int) else stages):
            value = self.reg(value, f"{name}_{stage + 1}")
        return value
