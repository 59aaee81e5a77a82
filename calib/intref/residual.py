"""Adding two uint8 tensors held at different scales (the residual stream, Swin's position bias).

    out[c] = clamp(z_o + round_shift(ma[c] * (a[c] - z_a) + mb[c] * (b[c] - z_b), shift), 0, 255)

``ma / 2**shift ~ s_a[c] / s_o[c]`` and ``mb / 2**shift ~ s_b[c] / s_o[c]``, per channel, because
both the inputs and the output may carry per-channel power-of-two (PTF) scales. The two
multipliers share one shift so the sum is formed before the single rounding. Widths: centred
operands 9-bit signed, multipliers < 2**16, so each product fits 25 bits and the sum 26 bits.
"""

import numpy as np
import torch

from .requant import MULT_BITS, round_shift

__all__ = ["add_requant", "add_multipliers"]


def add_multipliers(ratio_a, ratio_b, what: str = "residual add") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Offline: integer (ma, mb, shift) for real per-channel ratios s_a/s_o and s_b/s_o."""
    ra, rb = np.asarray(ratio_a, np.float64), np.asarray(ratio_b, np.float64)
    top = float(max(ra.max(), rb.max()))
    if not np.isfinite(top) or top <= 0 or ra.min() <= 0 or rb.min() <= 0:
        raise ValueError(f"{what}: scale ratios must be positive and finite")
    shift = MULT_BITS - 1 - int(np.floor(np.log2(top)))
    if not 1 <= shift <= 40:
        raise ValueError(f"{what}: scale ratio {top:g} cannot be represented (shift {shift} outside 1..40)")
    ma = torch.from_numpy(np.rint(ra * 2.0**shift).astype(np.int64))
    mb = torch.from_numpy(np.rint(rb * 2.0**shift).astype(np.int64))
    if int(max(ma.max(), mb.max())) >= 1 << MULT_BITS:  # rounding reached 2**16
        ma, mb, shift = (ma + 1) >> 1, (mb + 1) >> 1, shift - 1
    return ma, mb, shift


def add_requant(a: torch.Tensor, z_a: int, ma: torch.Tensor, b: torch.Tensor, z_b: int, mb: torch.Tensor,
                shift: int, z_o: int) -> torch.Tensor:
    """Sum of two code tensors at different scales, requantized to uint8 codes (int64)."""
    acc = ma.to(torch.int64) * (a.to(torch.int64) - z_a) + mb.to(torch.int64) * (b.to(torch.int64) - z_b)
    return torch.clamp(round_shift(acc, shift) + z_o, 0, 255)
