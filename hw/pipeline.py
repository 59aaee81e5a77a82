"""Pipelines between two ``lib.stream`` interfaces.

``CreditPipeline`` (every unit's output pipeline): registers without an enable, an output FIFO,
and an input taken only while the FIFO has a slot for every beat in flight. ``StallPipeline``:
a chain of registers that all advance on one enable, moving when the output is empty or being
taken (``en = ~out.valid | out.ready``), with the input ready exactly then; memory read ports
inside it take ``en`` so their data holds during a stall. Both stream one beat per cycle and drop
nothing under back-pressure; the stall-together form costs no FIFO but its enable reaches every
register, so it is kept for short, narrow stages. ``CreditLink``: a FIFO in one module that another
writes over long wires, its room counted where the writer is.
"""

import copy

from amaranth import Module, Mux, Signal, Value
from amaranth.utils import bits_for

from .fifo import LutRamFifo

__all__ = ["StallPipeline", "CreditPipeline", "CreditLink", "delayed"]


def delayed(m: Module, value, cycles: int, name: str):
    """`value` `cycles` clock edges later, through registers without an enable (in `m`), named
    `name`_1, `name`_2, ...: a free-running delay line, for logic outside a pipeline's stages."""
    for stage in range(cycles):
        reg = Signal(Value.cast(value).shape(), name=f"{name}_{stage + 1}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


class _Pipeline:
    """What both pipelines share, given their `m` (the module their registers go into) and `reg`."""

    def delay(self, value, stages: int, name: str):
        """`value` `stages` stages later; a Python int (a constant) stays as it is."""
        for stage in range(0 if isinstance(value, int) else stages):
            value = self.reg(value, f"{name}_{stage + 1}")
        return value

    def part(self, name: str):
        """This pipeline, building its registers and logic (`m`) in a new submodule `slice_<name>`.

        The synthesis flow keeps `slice_*` modules apart (rtl_gen/synth.py), so a part's copy of an
        operand shared with other parts stays its own register: one lane's copy fans out to that
        lane only, where yosys would otherwise merge the copies into one net reaching every lane."""
        part = copy.copy(self)
        part.m = self.m.submodules[f"slice_{name}"] = Module()
        return part


class StallPipeline(_Pipeline):
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

    def part(self, name: str, en=None):
        """A part (see `_Pipeline.part`); with `en`, an expression of registers that equals this
        pipeline's enable in every cycle, the part computes its own copy of the enable, so that
        one net does not reach the registers of every part."""
        part = super().part(name)
        if en is not None:
            part.en = Signal(name=f"{name}_en")
            part.m.d.comb += part.en.eq(en)
        return part

    def reg(self, value, name: str, shape=None) -> Signal:
        """`value` registered into the next stage (moves only with the pipeline)."""
        if shape is None:  # keep a View's layout (Value.cast would flatten it to plain bits)
            shape = value.shape() if hasattr(value, "shape") else Value.cast(value).shape()
        r = Signal(shape, name=name)
        with self.m.If(self.en):
            self.m.d.sync += r.eq(value)
        return r


class CreditPipeline(_Pipeline):
    """`depth` register stages that never stall, from stream `inp` to stream `out` through a FIFO.

    A StallPipeline's enable reaches every register and memory read port of its unit: in a
    requantizer that is about a thousand flip-flops, and the routing of that one net, not logic,
    limits the clock. Here the registers have no enable. A beat is accepted only while the beats
    already accepted and not yet read out of the FIFO (`claimed`) leave it a FIFO slot, so
    back-pressure on `out` lowers `inp.ready` (a register, `room`) and nothing is dropped. The unit
    drives `result` (the out payload) from its last stage; `push` (default 1) says which last-stage
    beats are results, the rest give their slot back. Beats leave `depth` + FIFO_LATENCY cycles
    after they are accepted, one per cycle when `out` keeps up.
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
        # `inp.ready` is the register `room` (it may reach far), claimed < capacity: its next value
        # is chosen from compares of `claimed` itself by the change this cycle (+1 for an accepted
        # beat, -1 for a read and for a dropped one), a LUT rather than an adder and a compare.
        self.room = Signal(init=1, name=f"{name}_room")
        m.d.comb += inp.ready.eq(self.room)
        self._valid = [inp.valid & inp.ready] + [Signal(name=f"{name}_valid_{i + 1}") for i in range(depth)]
        m.d.sync += [self._valid[i + 1].eq(self._valid[i]) for i in range(depth)]
        self.out_valid = self._valid[-1]
        read = out.valid & out.ready
        dropped = self.out_valid & ~self.push
        accepted = self._valid[0]
        m.d.sync += claimed.eq(claimed + accepted - read - dropped)
        # the value `room` takes at the next clock edge (claimed never exceeds capacity)
        self.room_next = Mux(read | dropped, ~accepted | (read & dropped) | (claimed < capacity),
                             Mux(accepted, claimed < capacity - 1, claimed < capacity))
        m.d.sync += self.room.eq(self.room_next)
        m.d.comb += [fifo.w.valid.eq(self.out_valid & self.push),
                     out.valid.eq(fifo.r.valid), out.payload.eq(fifo.r.payload), fifo.r.ready.eq(out.ready)]

    def reg(self, value, name: str, shape=None) -> Signal:
        """`value` registered into the next stage."""
        if shape is None:  # keep a View's layout (Value.cast would flatten it to plain bits)
            shape = value.shape() if hasattr(value, "shape") else Value.cast(value).shape()
        r = Signal(shape, name=name)
        self.m.d.sync += r.eq(value)
        return r


class CreditLink:
    """A LutRamFifo of DEPTH entries in `receiver` feeding stream `sink`, written from `sender`:
    `payload` enters it in every cycle the sender drives `offer` while `room` (the sender's ready);
    `zero_empty` as for LutRamFifo.

    Why: a FIFO whose room is a register beside it (a CreditPipeline) is far from a writer that
    feeds many such FIFOs, and the writer's handshake then ORs their far registers together (the
    top's din ready through its route multiplexer to its word counters: 7 LUT levels and 8.9 ns of
    routing, the 8x8 top's critical path at 88.5 MHz). Here `room` is a register in `sender`,
    computed from the words sent and a copy of the receiver's count of words read (wrap-around
    counters); the copy lags by a cycle, so `room` is conservative, and DEPTH covers the round trip
    (about five cycles) so a stream still moves one word per cycle. DEPTH = 16 costs no more LUT
    RAM than a 4-entry FIFO (TRELLIS_DPR16X4 is 16 deep).

    The receiver's count is a register of its own domain, so it stays right where that domain's
    clock is gated (Accelerator's simulation build): a count held still reads as no more reads.
    """

    DEPTH = 16

    def __init__(self, sender: Module, receiver: Module, sink, payload, name: str, zero_empty: bool = False):
        bits = bits_for(self.DEPTH)  # the counters' difference runs over 0..DEPTH
        receiver.submodules[f"{name}_fifo"] = fifo = LutRamFifo(sink.payload.shape(), self.DEPTH, zero_empty)
        read = Signal(bits, name=f"{name}_read")
        read_seen, sent = Signal(bits, name=f"{name}_read_seen"), Signal(bits, name=f"{name}_sent")
        self.offer, self.room = Signal(name=f"{name}_offer"), Signal(init=1, name=f"{name}_room")
        send = self.offer & self.room
        receiver.d.comb += [sink.valid.eq(fifo.r.valid), sink.payload.eq(fifo.r.payload), fifo.r.ready.eq(sink.ready)]
        receiver.d.sync += read.eq(read + (fifo.r.valid & fifo.r.ready))
        # `offer` comes through the sender's handshake logic, so it only selects between the two
        # next values of `room`, each computed from registers (from the top's in_open through
        # `send`, the adders and the compare to the residual input's room took 10.5 ns of routing
        # and 3.3 ns of logic).
        in_flight = (sent - read_seen)[:bits]
        sender.d.comb += [fifo.w.valid.eq(send), fifo.w.payload.eq(payload)]
        sender.d.sync += [read_seen.eq(read), sent.eq(sent + send),
                          self.room.eq(Mux(send, in_flight != self.DEPTH - 1, in_flight != self.DEPTH))]
