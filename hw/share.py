"""Lane sharing: a lane-parallel unit (requantizer, residual adder) with fewer lanes of arithmetic
than its beats have lanes.

Where a unit's products are in LUTs (the 12x12 top, hw.top.TopConfig) a lane costs about 1.3k LUTs
and flip-flops. With ``share`` S, a unit of L lanes builds ceil(L / S) and takes a beat every S
cycles: ``slices`` turns each beat into S slices of those lanes, one a cycle, each with the beat's
other fields and its phase (slice p carries lanes p * lanes .. p * lanes + lanes - 1); the
pipeline computes slice by slice; ``gather`` holds the first S - 1 slices' results beside the
pipeline's end and sends the whole beat into the output FIFO with the last (the other slices give
their FIFO slot back, ``CreditPipeline.push``). The ports, and so the compiler and the testbenches,
are the same as without sharing; the per-lane parameter banks follow the phase
(``hw.requant.param_banks``).
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import data, stream

from .pipeline import CreditPipeline

__all__ = ["slices", "gather", "SharedLanes"]


def slices(m: Module, inp, lanes: int, share: int, sliced: tuple[str, ...]):
    """Stream `inp`'s beats as `share` slices of `lanes` lanes each: the fields named in `sliced`
    (ArrayLayouts, one element per logical lane) cut into slices, every other field as it is.
    Returns the slice stream and the phase of its current slice (a signal, 0 .. share - 1)."""
    members = inp.payload.shape().members
    layout = data.StructLayout({name: data.ArrayLayout(members[name].elem_shape, lanes) if name in sliced else shape
                                for name, shape in members.items()})
    out = stream.Signature(layout).create()
    phase = Signal(range(share), name="phase")
    first = phase == 0
    beat = Signal(inp.payload.shape(), name="beat")  # the beat whose later slices are due
    m.d.comb += [out.valid.eq(~first | inp.valid), inp.ready.eq(first & out.ready)]
    with m.If(inp.valid & inp.ready):
        m.d.sync += beat.eq(inp.payload)
    step = out.valid & out.ready
    with m.If(step):
        m.d.sync += phase.eq(Mux(phase == share - 1, 0, phase + 1))
    for name in members:
        if name not in sliced:
            m.d.comb += out.payload[name].eq(Mux(first, inp.payload[name], beat[name]))
            continue
        width = members[name].length
        # the beat's lanes still due, shifted down a slice a cycle
        rest = Signal(data.ArrayLayout(members[name].elem_shape, lanes * (share - 1)), name=f"rest_{name}")

        def lane(i, name=name, width=width):  # lane i of the beat arriving now; past the last lane, padding
            return inp.payload[name][i] if i < width else 0
        m.d.comb += [out.payload[name][i].eq(Mux(first, lane(i), rest[i])) for i in range(lanes)]
        with m.If(step):
            m.d.sync += [rest[i].eq(Mux(first, lane(i + lanes), rest[i + lanes] if i + lanes < len(rest) else 0))
                         for i in range(len(rest))]
    return out, phase


def gather(m: Module, pipe: CreditPipeline, phase, results: list, share: int) -> list:
    """`results` (a value per lane at `pipe`'s last stage, for the slice that entered it `pipe.depth`
    cycles earlier in `phase`) -> every logical lane's result in the cycle of the beat's last slice,
    which alone pushes into the FIFO."""
    out_phase = pipe.delay(phase, pipe.depth, "phase")
    m.d.comb += pipe.push.eq(out_phase == share - 1)
    held = []
    for p in range(share - 1):
        for lane, result in enumerate(results):
            r = Signal.like(result, name=f"slice{p}_lane{lane}")
            with m.If(pipe.out_valid & (out_phase == p)):
                m.d.sync += r.eq(result)
            held.append(r)
    return held + results


class SharedLanes:
    """What the configs of lane-sharing units have in common: mixed into a config dataclass with the
    fields `lanes` and `share` and the class constant STAGES (its pipeline's stages)."""

    @property
    def physical_lanes(self) -> int:
        return -(-self.lanes // self.share)

    @property
    def LATENCY(self) -> int:
        """accept -> out: a beat's last slice enters the pipeline `share` - 1 cycles after the beat."""
        return self.STAGES + CreditPipeline.FIFO_LATENCY + self.share - 1

    def timing(self) -> dict:
        rate = {"beats_per_cycle": 1} if self.share == 1 else {"cycles_per_beat": self.share}
        return {"latency": self.LATENCY, **rate}

    @property
    def share_suffix(self) -> str:
        """The module name's mark of a shared unit."""
        return f"_s{self.share}" if self.share > 1 else ""
