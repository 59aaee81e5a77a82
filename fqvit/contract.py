"""The integer contract's numbers, stated once: what the hardware (``hw/``) builds and the integer
reference (``calib/intref/``) computes. ``docs/numerics.md`` is the prose; each constant here says
why it has its value. Pure Python on purpose: importing it costs nothing and pulls in no torch,
numpy or Amaranth, so the hardware generator and the reference share it without sharing each other.
"""

__all__ = [
    # Log-Int-Softmax
    "EXP_BITS", "ZERO_CODE", "CODE_BITS", "LIS_RULES", "DEFAULT_LIS_RULE", "LOGIT_BITS", "TABLE_BITS",
    "RECIP_BITS", "MAX_KEYS", "check_lis_rule",
    # requantization
    "MULT_BITS", "MAX_SHIFT", "SHIFT_BITS",
    # LayerNorm
    "FN", "LN_RECIP_BITS", "MAX_FG", "PTF_MAX_ALPHA", "MAX_CHANNELS",
    # GEMM on codes
    "ACC_BITS", "INT32_MIN", "INT32_MAX", "CodeSpec", "UINT8", "INT8", "check_code_values", "check_no_overflow",
    # sizes
    "MAX_ARRAY_DIM",
]

# ---- Log-Int-Softmax (docs/numerics.md, "Softmax and Log-Int-Softmax") -------------------------

# EXP[d] = round(2**EXP_BITS * exp(-s * d)): the table's fraction bits. 15 keeps an entry (<= 2**15)
# in a 16-bit ROM word, and it is also the fraction of the LIS weights 2**(15 - c) that attention x V
# shifts V by, so shifting by up to 15 is exact and the LIS probabilities have scale 2**-15.
EXP_BITS = 15
# LIS codes 0..15 stand for 2**-code; 16 more thresholds than a 4-bit code holds, so the zero state
# (probability below 2**-15, or a masked key) is code 16.
ZERO_CODE = 16
# Width of a LIS code with its zero state: 0..16 needs 5 bits.
CODE_BITS = ZERO_CODE.bit_length()
# rule name -> (NUM, DEN): code c = #{t in 0..15 : DEN * sum >= NUM * e * 2**t}. "fqvit" (3/2) is
# FQ-ViT's log_round; "nearest" (4/3) puts the threshold at the midpoint of 2**-(k+1) and 2**-k in
# probability, i.e. each probability goes to the nearer power of two.
LIS_RULES = {"fqvit": (3, 2), "nearest": (4, 3)}
# The unbiased rule is the project's default everywhere (calibration, export, the softmax unit and
# the top); docs/results.md compares the two.
DEFAULT_LIS_RULE = "nearest"
# Softmax inputs are uint8 logit codes, so the table index max - x is 8 bits: a 256-entry table.
LOGIT_BITS = 8
# The softmax unit's table word: EXP entries are at most 2**EXP_BITS, one more bit than EXP_BITS.
TABLE_BITS = EXP_BITS + 1
# uint8 softmax (8/8/8): r = floor(M * 2**RECIP_BITS / sum). With sum <= 2**25 (MAX_KEYS keys) and
# M >= 2**15, 24 bits keep r at 2**14 or more, so its floor costs under 2**-14 relative error.
RECIP_BITS = 24
# Longest attention row the softmax unit and the top build for: DEN * sum then fits 28 bits
# (docs/numerics.md); ViT-B/16 at 384 px has 577 keys.
MAX_KEYS = 1024


def check_lis_rule(rule, what: str = "LIS rule") -> str:
    """`rule` if it names a LIS rule, else ValueError naming the known rules."""
    if not isinstance(rule, str) or rule not in LIS_RULES:
        raise ValueError(f"{what} must be one of {sorted(LIS_RULES)}, got {rule!r}")
    return rule


# ---- Requantization (docs/numerics.md, "Requantization") -----------------------------------------

# mult / 2**shift with 2**15 <= mult < 2**16: a 16-bit mantissa (relative error < 2**-16) whose
# product with an int32 accumulator fits 48 bits (two 18x18 DSPs).
MULT_BITS = 16
# Shifts 1..62: with the 16-bit mantissa that covers multipliers in [2**-47, 2**14], and every
# intermediate of round_shift on the 48-bit product stays inside int64.
MAX_SHIFT = 62
# A shift field holds 1..MAX_SHIFT: 6 bits.
SHIFT_BITS = MAX_SHIFT.bit_length()

# ---- LayerNorm (docs/numerics.md, "LayerNorm with PTF inputs") -----------------------------------

# Fraction bits of the normalized value n = (x - mean) / std: |n| < 66 * 2**FN fits 18-bit signed.
FN = 10
# R = floor(2**(LN_RECIP_BITS + k) / D) with k the bit length of D: R lies in (2**15, 2**16], a
# 16-bit reciprocal mantissa (17 bits to hold 2**16) from one division per token.
LN_RECIP_BITS = 15
# The per-layer gamma fraction FG puts the largest |G| in [2**14, 2**15]; it never exceeds 30 (a
# 5-bit field), enough for gamma / s_out down to 2**-16.
MAX_FG = 30
# PTF shifts alpha in 0..3 (FQ-ViT's K = 3): X = (q - z) << alpha is then 12-bit signed.
PTF_MAX_ALPHA = 3
# Widest token LayerNorm takes (ViT-L has 1024 channels, Swin-L's last patch merging 3072); the
# moment widths are sized for it: M1 24-bit signed, M2 35 bits, V = C * M2 - M1**2 47 bits.
MAX_CHANNELS = 4096

# ---- GEMM on 8-bit codes (docs/numerics.md, "GEMM on 8-bit codes") -------------------------------

# Products accumulate in int32: the array's accumulator, and the widest value a requantizer takes.
ACC_BITS = 32
INT32_MIN, INT32_MAX = -(2 ** (ACC_BITS - 1)), 2 ** (ACC_BITS - 1) - 1


class CodeSpec:
    """How an 8-bit code is read: its integer range and whether it is signed."""

    def __init__(self, name: str, signed: bool):
        self.name = name
        self.signed = signed
        self.lo, self.hi = (-128, 127) if signed else (0, 255)

    def __repr__(self):
        return self.name


UINT8 = CodeSpec("uint8", signed=False)  # activations
INT8 = CodeSpec("int8", signed=True)  # weights (symmetric, zero point 0)


def check_code_values(name: str, lo: int | None, hi: int | None, spec: CodeSpec, zero) -> None:
    """Raise ValueError unless codes whose smallest/largest values are `lo`/`hi` (None: no codes)
    and the zero point `zero` are valid `spec` codes."""
    if lo is not None and (lo < spec.lo or hi > spec.hi):
        raise ValueError(f"{name} holds values in [{lo}, {hi}], outside the {spec} code range [{spec.lo}, {spec.hi}]")
    if isinstance(zero, bool) or not isinstance(zero, int) or not spec.lo <= zero <= spec.hi:
        raise ValueError(f"{name} zero point must be an integer in [{spec.lo}, {spec.hi}], got {zero!r}")


def check_no_overflow(k: int, a_spec: CodeSpec, za: int, b_spec: CodeSpec, zb: int) -> None:
    """Refuse a reduction length for which some inputs could overflow the int32 accumulator."""
    worst = max(abs(a_spec.lo - za), abs(a_spec.hi - za)) * max(abs(b_spec.lo - zb), abs(b_spec.hi - zb))
    if k * worst > INT32_MAX:
        raise ValueError(
            f"a reduction over K={k} can overflow int32 with these zero points "
            f"(largest product {worst}); K must be at most {INT32_MAX // max(worst, 1)}"
        )


# ---- Sizes --------------------------------------------------------------------------------------

# Largest systolic array side: beyond 32 the Verilator build of the flat mesh gets slow, and an
# ECP5-85F has no room anyway (156 multipliers, i.e. 12x12).
MAX_ARRAY_DIM = 32
