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

from amaranth import ClockSignal, Const, Instance, Module, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DSP_WIDTH", "PRODUCT_LATENCY", "RegisteredMultiplier", "ECP5Target", "wide_product"]

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


CHUNK_BITS = DSP_WIDTH - 1  # unsigned chunks of a wide operand, sign-extended by one bit to fit
PRODUCT_LATENCY = RegisteredMultiplier.LATENCY + 1  # wide_product: the multipliers, then the sum


def wide_product(m: Module, a, b, name: str) -> Signal:
    """``a * b`` registered PRODUCT_LATENCY cycles later, for a signed or unsigned `a` of any width
    and a `b` of at most 18 bits signed (17 unsigned): `a` is cut into CHUNK_BITS-bit chunks (the top
    one keeps the sign), each multiplies `b` in a RegisteredMultiplier, and one register sums
    the shifted partial products. No multiplier shares a cycle with routing or an adder. A
    constant `b` needs no multiplier: `a * b` then goes through plain registers."""
    a = Value.cast(a)
    if isinstance(b, int) or isinstance(b, Const):
        value = a * b
        for stage in range(PRODUCT_LATENCY):
            reg = Signal.like(value, name=f"{name}_p{stage}")
            m.d.sync += reg.eq(value)
            value = reg
        return value
    b = Value.cast(b)
    b_width = len(b) if b.shape().signed else len(b) + 1  # as a signed multiplier operand
    if b_width > DSP_WIDTH:
        raise ValueError(f"wide_product: b must fit {DSP_WIDTH} bits signed, got {b.shape()}")
    partials = []
    for i, lo in enumerate(range(0, len(a), CHUNK_BITS)):
        hi = min(lo + CHUNK_BITS, len(a))
        top = hi == len(a)
        chunk = a[lo:hi].as_signed() if top and a.shape().signed else a[lo:hi]
        m.submodules[f"{name}_mult{i}"] = mult = RegisteredMultiplier(len(chunk) + (0 if chunk.shape().signed else 1), b_width)
        m.d.comb += [mult.a.eq(chunk), mult.b.eq(b)]
        partials.append(mult.p.as_signed() << lo if i else mult.p)
    total = sum(partials[1:], partials[0])
    product = Signal(signed(len(a) + len(b) + 1), name=f"{name}_product")
    m.d.sync += product.eq(total)
    return product
