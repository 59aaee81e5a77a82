"""A pipelined signed multiplier that lowers to an FPGA DSP block with its own registers.

``p = a * b`` two cycles after the operands: an input register and an output register, exactly
the two register banks of an ECP5 MULT18X18D. yosys' ``synth_ecp5`` maps a ``*`` to a
combinational MULT18X18D and leaves the registers in the fabric, so the path runs register ->
routing -> multiplier -> routing -> register (about 9.5 ns on speed grade 6, which capped the
systolic array at 105 MHz). Elaborated for a platform whose ``dsp_family`` is ``"ecp5"``, the
component instantiates MULT18X18D with REG_INPUTA/B and REG_OUTPUT clocked, and both routing
legs get a whole cycle. Anywhere else (simulation, other vendors) it is the same two registers
around a behavioural multiply, so the cycle behaviour is identical; ``sim/models/MULT18X18D.v``
models the primitive for the test that simulates the lowered form.
"""

from amaranth import ClockSignal, Const, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DSP_WIDTH", "RegisteredMultiplier", "ECP5Target"]

DSP_WIDTH = 18  # MULT18X18D operand width


class ECP5Target:
    """The platform object the synthesis flow elaborates with: lowers RegisteredMultiplier to
    MULT18X18D. Amaranth passes it to every ``elaborate``; nothing else reads it."""

    dsp_family = "ecp5"


class RegisteredMultiplier(wiring.Component):
    """Signed ``a_width`` x ``b_width`` multiply (each at most 18 bits) with latency 2."""

    LATENCY = 2

    def __init__(self, a_width: int, b_width: int):
        if not (1 <= a_width <= DSP_WIDTH and 1 <= b_width <= DSP_WIDTH):
            raise ValueError(f"RegisteredMultiplier operands must be 1..{DSP_WIDTH} bits, got {a_width} x {b_width}")
        super().__init__({"a": In(signed(a_width)), "b": In(signed(b_width)), "p": Out(signed(a_width + b_width))})

    def elaborate(self, platform):
        m = Module()
        if getattr(platform, "dsp_family", None) == "ecp5":
            a18, b18, p36 = Signal(signed(DSP_WIDTH)), Signal(signed(DSP_WIDTH)), Signal(signed(2 * DSP_WIDTH))
            m.d.comb += [a18.eq(self.a), b18.eq(self.b), self.p.eq(p36)]  # sign-extended to the block's width
            m.submodules.mult = Instance(
                "MULT18X18D",
                p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0", p_REG_OUTPUT_CLK="CLK0",
                p_GSR="DISABLED", p_RESETMODE="SYNC",
                i_CLK0=ClockSignal(), i_CE0=Const(1), i_RST0=Const(0),
                i_SIGNEDA=Const(1), i_SIGNEDB=Const(1), i_SOURCEA=Const(0), i_SOURCEB=Const(0),
                **{f"i_A{k}": a18[k] for k in range(DSP_WIDTH)},
                **{f"i_B{k}": b18[k] for k in range(DSP_WIDTH)},
                **{f"i_C{k}": Const(0) for k in range(DSP_WIDTH)},
                **{f"o_P{k}": p36[k] for k in range(2 * DSP_WIDTH)},
            )
        else:
            a_r, b_r = Signal.like(self.a), Signal.like(self.b)
            m.d.sync += [a_r.eq(self.a), b_r.eq(self.b), self.p.eq(a_r * b_r)]
        return m
