"""Attention x V without multipliers: shift-accumulate V rows by the 4-bit LIS codes.

    acc[i, d] = sum_j (v[j, d] - z_v) << (15 - c[i, j])        (c = 16: the term is dropped)

V's centred codes are pre-shifted by 15 fractional bits, so the shift by up to 15 loses nothing:
acc is *exactly* ``sum_j 2**-c[i,j] * (v[j,d] - z_v)`` at scale ``s_v * 2**-15``, which is what
FQ-ViT's float ``attn @ v`` computes on fake-quant values. A code c is only given when
``2**-c < (NUM/DEN) * p`` (see softmax.py), so the weights of a row sum to less than 1.5 * 2**15
and |acc| < 1.5 * 255 * 2**15 < 2**24: a 25-bit signed accumulator suffices.
The accumulator is then requantized (calib.intref.requant) to the attention output's uint8 codes.
"""

import torch

from .softmax import lis_weights

__all__ = ["attnv_shift"]


def attnv_shift(codes: torch.Tensor, v: torch.Tensor, z_v: int) -> torch.Tensor:
    """int64 accumulators [..., Nq, D] for LIS codes [..., Nq, Nk] and uint8 V codes [..., Nk, D].

    Computed as an integer product with the power-of-two weights, which is the same sum of shifts.
    """
    return lis_weights(codes) @ (v.to(torch.int64) - z_v)
