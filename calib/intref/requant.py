"""Dyadic requantization: the one rounding rule of the integer model.

A real multiplier ``m`` is stored as ``mult / 2**shift`` with a 16-bit mantissa
(``2**15 <= mult < 2**16``) and ``1 <= shift <= 62``. Applying it rounds half up (towards +inf):

    round_shift(x, n) = (x + 2**(n-1)) >> n          (arithmetic shift, so floor)
    requantize(acc)   = clamp(zero + round_shift(acc * mult, shift), lo, hi)

``acc`` is an int32 accumulator, so ``acc * mult`` needs 48 bits (int64 here, two 18x18 DSPs in
hardware). ``dyadic`` runs offline at export time; everything else is integer-only.
"""

import numpy as np
import torch

from fqvit.contract import MAX_SHIFT, MULT_BITS

__all__ = ["MULT_BITS", "dyadic", "round_shift", "requantize", "check_mult"]


def dyadic(real, what: str = "multiplier", bits: int = MULT_BITS) -> tuple[torch.Tensor, torch.Tensor]:
    """(mult, shift) int64 tensors with ``mult / 2**shift`` the closest such value to each ``real``.

    Offline (export-time) helper. Raises ValueError naming `what` if a multiplier is not a positive
    finite number or needs a shift outside 1..62 (a scale mismatch of more than ~2**46).
    """
    r = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"{what}: real multipliers must be positive and finite, got {r[~(np.isfinite(r) & (r > 0))][:4]}")
    exp = np.floor(np.log2(r)).astype(np.int64)
    shift = (bits - 1) - exp
    mult = np.rint(r * np.exp2(shift.astype(np.float64))).astype(np.int64)
    carry = mult >= (1 << bits)  # rounding up to 2**bits: renormalise
    mult[carry] >>= 1
    shift[carry] -= 1
    if np.any(shift < 1) or np.any(shift > MAX_SHIFT):
        bad = r[(shift < 1) | (shift > MAX_SHIFT)][:4]
        raise ValueError(
            f"{what}: {bad} cannot be represented as a {bits}-bit mantissa with a shift in 1..{MAX_SHIFT} "
            f"(the multiplier must lie in [2**-{MAX_SHIFT - bits + 1}, 2**{bits - 2}])"
        )
    shape = np.shape(real)
    return torch.from_numpy(mult.reshape(shape)), torch.from_numpy(shift.reshape(shape))


def round_shift(x: torch.Tensor, shift) -> torch.Tensor:
    """``floor((x + 2**(shift-1)) / 2**shift)`` on int64, i.e. divide by 2**shift rounding half up.

    `shift` (int or int64 tensor broadcastable to `x`) must be >= 1.
    """
    x = x.to(torch.int64)
    if isinstance(shift, int):
        if shift < 1:
            raise ValueError(f"round_shift needs shift >= 1, got {shift}")
        return (x + (1 << (shift - 1))) >> shift
    shift = shift.to(torch.int64)
    half = torch.bitwise_left_shift(torch.ones_like(shift), shift - 1)
    return torch.bitwise_right_shift(x + half, shift)


def requantize(acc: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor, zero: int = 0,
               lo: int = 0, hi: int = 255) -> torch.Tensor:
    """``clamp(zero + round_shift(acc * mult, shift), lo, hi)`` as int64; mult/shift broadcast over
    the last (channel) dimension."""
    y = round_shift(acc.to(torch.int64) * mult.to(torch.int64), shift)
    return torch.clamp(y + zero, lo, hi)


def check_mult(mult: torch.Tensor, shift: torch.Tensor) -> None:
    """Raise ValueError unless (mult, shift) are valid dyadic multipliers."""
    if mult.dtype.is_floating_point or shift.dtype.is_floating_point:
        raise ValueError("dyadic multipliers must be integer tensors")
    if mult.numel() and (int(mult.min()) < (1 << (MULT_BITS - 1)) or int(mult.max()) >= (1 << MULT_BITS)):
        raise ValueError(f"mult must lie in [2**{MULT_BITS - 1}, 2**{MULT_BITS}), got [{int(mult.min())}, {int(mult.max())}]")
    if shift.numel() and (int(shift.min()) < 1 or int(shift.max()) > MAX_SHIFT):
        raise ValueError(f"shift must lie in [1, {MAX_SHIFT}], got [{int(shift.min())}, {int(shift.max())}]")


