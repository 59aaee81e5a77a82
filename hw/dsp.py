"""Pipelined signed multipliers: in an FPGA DSP block with its own registers, or in LUTs.

``RegisteredMultiplier``: ``p = a * b`` two cycles after the operands, an input register and an
output register, exactly the two register banks of an ECP5 MULT18X18D. yosys' ``synth_ecp5`` maps
a ``*`` to a combinational MULT18X18D and leaves the registers in the fabric, so the path runs
register -> routing -> multiplier -> routing -> register (about 9.5 ns on speed grade 6, which
capped the systolic array at 105 MHz). Elaborated for a platform whose ``dsp_family`` is
``"ecp5"``, the component instantiates MULT18X18D with REG_INPUTA/B and REG_OUTPUT clocked, and
both routing legs get a whole cycle. Anywhere else (simulation, other vendors) it is the same two
registers around a behavioural multiply, so the cycle behaviour is identical;
``sim/models/MULT18X18D.v`` models the primitive for the test that simulates the lowered form.

``wide_product``: the units' products (requantizer, residual adder, LayerNorm, attention x V's
requantizer), built either from RegisteredMultipliers or, where the device's DSP blocks are all
taken by the systolic array (the 12x12 top: 144 of the LFE5U-85F's 156), as a pipelined adder tree
of partial products in LUTs and carry chains. Both forms take PRODUCT_LATENCY cycles, so a unit's
timing and its tests do not depend on the choice: the DSP form spends the extra cycles on a
register between the DSP block and the fabric (a long route on a full device) and on the sum.
"""

from amaranth import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, Value, signed
from amaranth.hdl import Fragment
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .pipeline import delayed

__all__ = ["DSP_WIDTH", "PRODUCT_LATENCY", "RegisteredMultiplier", "ECP5Target", "wide_product", "dsp_blocks", "signed_width"]

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
# The LUT form: an input register, then one level of a binary adder tree a cycle over at most
# DSP_WIDTH partial products (one carry chain between registers, the partial products' ANDs in
# front of the first level).
PRODUCT_LATENCY = 1 + ceil_log2(DSP_WIDTH)


def signed_width(value) -> int:
    """Bits of the narrowest signed shape holding every value of `value` (an int or a Value)."""
    shape = Value.cast(value).shape()
    return shape.width + (not shape.signed)


def wide_product(m: Module, a, b, name: str, lut: bool = False) -> Value:
    """``a * b`` (signed) registered PRODUCT_LATENCY cycles later, for a signed or unsigned `a` of
    any width and a `b` of at most 18 bits signed (17 unsigned). A constant `b` needs no
    multiplier: `a * b` then goes through plain registers.

    DSP form (``lut=False``): `a` is cut into CHUNK_BITS-bit chunks (the top one keeps the sign),
    each multiplies `b` in a RegisteredMultiplier, a register takes each partial product off the
    DSP block, and one register sums them. LUT form: the narrower operand's bits select shifted
    copies of the other, summed pairwise, one adder level a cycle."""
    a = Value.cast(a)
    if isinstance(b, (int, Const)):
        return delayed(m, a * b, PRODUCT_LATENCY, f"{name}_p")
    b = Value.cast(b)
    if signed_width(b) > DSP_WIDTH:
        raise ValueError(f"wide_product: b must fit {DSP_WIDTH} bits signed, got {b.shape()}")
    return _lut_product(m, a, b, name) if lut else _dsp_product(m, a, b, name)


def _dsp_product(m: Module, a: Value, b: Value, name: str) -> Signal:
    partials = []
    for i, lo in enumerate(range(0, len(a), CHUNK_BITS)):
        hi = min(lo + CHUNK_BITS, len(a))
        top = hi == len(a)
        chunk = a[lo:hi].as_signed() if top and a.shape().signed else a[lo:hi]
        m.submodules[f"{name}_mult{i}"] = mult = RegisteredMultiplier(signed_width(chunk), signed_width(b))
        m.d.comb += [mult.a.eq(chunk), mult.b.eq(b)]
        partial = delayed(m, mult.p, 1, f"{name}_off{i}")  # the route off the DSP block gets a cycle
        partials.append(partial.as_signed() << lo if i else partial)
    total = Signal(signed(len(a) + len(b) + 1), name=f"{name}_sum")
    m.d.sync += total.eq(sum(partials[1:], partials[0]))
    return delayed(m, total, PRODUCT_LATENCY - RegisteredMultiplier.LATENCY - 2, f"{name}_pad")


def _lut_product(m: Module, a: Value, b: Value, name: str) -> Value:
    # operands as signed registers; y, the narrower, selects shifted copies of x
    x, y = (a, b) if signed_width(a) >= signed_width(b) else (b, a)
    y_signed = y.shape().signed
    x = delayed(m, x if x.shape().signed else Cat(x, Const(0, 1)).as_signed(), 1, f"{name}_x")
    y = delayed(m, y, 1, f"{name}_y")
    terms = []  # (value, shift): the product is the sum of value << shift
    for i in range(len(y)):
        partial = Mux(y[i], x, 0)  # y's top bit weighs -2**i when y is signed
        terms.append((-partial if y_signed and i == len(y) - 1 else partial, i))
    level = 0
    while len(terms) > 1:
        paired = []
        for j in range(0, len(terms) - 1, 2):
            (v1, s1), (v2, s2) = terms[j], terms[j + 1]
            d = s2 - s1  # s1 < s2: the low d bits of v1 pass through the adder's level
            total = (v1 >> d) + v2 if d else v1 + v2
            value = Cat(v1[:d], total).as_signed() if d else total
            reg = Signal(signed(len(value)), name=f"{name}_l{level}_{j // 2}")
            m.d.sync += reg.eq(value)
            paired.append((reg, s1))
        if len(terms) % 2:
            value, shift = terms[-1]
            paired.append((delayed(m, value, 1, f"{name}_l{level}_pass"), shift))
        terms, level = paired, level + 1
    value, _ = terms[0]  # shift 0: y's bit 0
    return delayed(m, value, PRODUCT_LATENCY - 1 - level, f"{name}_pad")


def dsp_blocks(component) -> int:
    """The MULT18X18D blocks `component` instantiates on the ecp5 target, counted in its elaborated
    hierarchy (the hardware itself, not a formula that could drift from it)."""

    def count(fragment) -> int:
        own = isinstance(fragment, Instance) and fragment.type == "MULT18X18D"
        return own + sum(count(sub) for sub, *_ in fragment.subfragments)

    return count(Fragment.get(component, ECP5Target()))
