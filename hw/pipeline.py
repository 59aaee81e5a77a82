"""Stall-together pipelines between two ``lib.stream`` interfaces.

Every unit is a chain of registers that all advance on one enable: the chain moves when its
output is empty or being taken (``en = ~out.valid | out.ready``), and the input is ready exactly
then. Nothing is dropped under back-pressure and a full pipeline streams one beat per cycle. Memory
read ports inside a pipeline take ``en`` as their enable so their data holds during a stall.
"""

from amaranth import Signal, Value

__all__ = ["StallPipeline"]


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
