"""Softmax over attention logits on uint8 codes: Log-Int-Softmax (LIS, 4-bit) and uint8.

Both start the same way, per row (one query, all keys):

    d[j]   = max_k x[k] - x[j]                     0..255 (zero points cancel)
    e[j]   = EXP[d[j]]                             EXP[d] = round(2**15 * exp(-s * d)), 16 bits
    sum    = sum_j e[j]                            <= N * 2**15 (24 bits for N <= 256)

``EXP`` is a 256-entry table built offline from the softmax-input scale ``s``. It replaces
FQ-ViT's I-BERT polynomial, whose n = 30 shift overflows 32 bits (FQ-ViT issue #21): a table
indexed by the 8-bit difference is exact, needs no shift budget and costs one 256x16 ROM.
Masked keys (Swin's shifted windows) get ``e = 0``; a row with every key masked is all zeros.

LIS then gives each entry a code c in 0..15 with probability 2**-c, or the zero state 16:

    c[j] = #{ t in 0..15 : DEN * sum >= NUM * e[j] * 2**t }

That is the number of thresholds the ratio ``R = sum / e`` passes, so ``c = k`` exactly when
``(NUM/DEN) * 2**(k-1) <= R < (NUM/DEN) * 2**k``; c = 16 (all sixteen passed, or e = 0) is zero.
With NUM/DEN = 3/2 this is FQ-ViT's ``log_round`` (k = floor(log2 R), +1 if R >= 1.5 * 2**k,
codes >= 16 become zero), without its rounding of R to an integer first. With 4/3 the threshold
is the midpoint of 2**-(k+1) and 2**-k in probability, i.e. round to the nearest representable
probability. Comparisons only: ``DEN * sum`` fits 26 bits and ``NUM * e * 2**15`` 33 bits.

The uint8 softmax (8/8/8 rows) uses one integer reciprocal per row:

    r      = floor(M * 2**24 / sum)                M / 2**N ~ 1 / s_p (dyadic)
    p[j]   = clamp(z_p + round_shift(e[j] * r, 24 + N), 0, 255)
"""

import math

import torch

from fqvit.contract import DEFAULT_LIS_RULE, EXP_BITS, LIS_RULES, LOGIT_BITS, RECIP_BITS, ZERO_CODE

from .requant import round_shift

__all__ = ["EXP_BITS", "ZERO_CODE", "LIS_RULES", "exp_table", "exp_rows", "lis_codes", "softmax_u8", "lis_weights"]

_POW2 = torch.tensor([1 << t for t in range(ZERO_CODE)], dtype=torch.int64)


def exp_table(scale: float) -> torch.Tensor:
    """Offline: ``EXP[d] = round(2**15 * exp(-scale * d))`` for d in 0..255 (int64 [256])."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"softmax input scale must be positive and finite, got {scale}")
    return torch.tensor([round(2**EXP_BITS * math.exp(-scale * d)) for d in range(1 << LOGIT_BITS)], dtype=torch.int64)


def exp_rows(x: torch.Tensor, table: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(e, sum): table exponentials of each row of codes x [..., N] relative to the row max.

    `mask` (bool, broadcastable to x) marks keys that take no part (they get e = 0).
    """
    x, table = x.to(torch.int64), table.to(torch.int64)
    if mask is not None:
        x_for_max = torch.where(mask, torch.zeros_like(x), x)
        mx = x_for_max.max(dim=-1, keepdim=True).values
        d = torch.where(mask, torch.zeros_like(x), mx - x)
        e = torch.where(mask, torch.zeros_like(x), table[d])
    else:
        e = table[x.max(dim=-1, keepdim=True).values - x]
    return e, e.sum(dim=-1, keepdim=True)


def lis_codes(x: torch.Tensor, table: torch.Tensor, rule: tuple[int, int] = LIS_RULES[DEFAULT_LIS_RULE],
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """4-bit log2 codes (int64, 0..15, or ZERO_CODE = 16) of the softmax of each row of x."""
    num, den = rule
    e, total = exp_rows(x, table, mask)
    lhs, rhs = den * total, num * e
    # #{t : lhs >= rhs * 2**t} = #{t : 2**t <= floor(lhs / rhs)}: one search instead of 16 compares
    # (an exact restatement for speed; the hardware compares leading-one positions).
    ratio = torch.where(rhs > 0, torch.div(lhs, torch.clamp(rhs, min=1), rounding_mode="floor"), lhs.new_tensor(1 << 62))
    return torch.searchsorted(_POW2, ratio.contiguous(), right=True)


def softmax_u8(x: torch.Tensor, table: torch.Tensor, inv_mult: int, inv_shift: int, z_p: int,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 softmax codes (int64) at scale s_p, with ``inv_mult / 2**inv_shift ~ 1 / s_p``."""
    e, total = exp_rows(x, table, mask)
    r = torch.div(inv_mult << RECIP_BITS, torch.clamp(total, min=1), rounding_mode="floor")
    return torch.clamp(round_shift(e * r, RECIP_BITS + inv_shift) + z_p, 0, 255)


def lis_weights(codes: torch.Tensor) -> torch.Tensor:
    """The integer weights ``2**(15 - c)`` (0 for the zero state) that attention x V shifts by."""
    codes = codes.to(torch.int64)
    w = torch.bitwise_left_shift(torch.ones_like(codes), torch.clamp(EXP_BITS - codes, min=0))
    return torch.where(codes >= ZERO_CODE, torch.zeros_like(w), w)
