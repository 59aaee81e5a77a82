"""A linear layer on codes: the systolic GEMM, an int32 bias and the requantizing epilogue.

    acc[.., n] = sum_k (x[.., k] - z_x) * w[n, k] + bias[n]          (int32)
    out[.., n] = requantize(acc, mult[n], shift[n], z_out, lo, hi)

Weights are int8 symmetric per output channel (zero point 0); the bias is pre-scaled to the
accumulator's scale s_x * s_w[n]. With ``lo, hi`` = the int32 range the output is the rescaled
accumulator itself (the classifier's logits).
"""

import torch

from fqvit.contract import INT32_MAX, INT32_MIN

from .gemm import INT8, UINT8, matmul_codes
from .requant import requantize

__all__ = ["linear_acc", "linear", "INT32_RANGE"]

INT32_RANGE = (INT32_MIN, INT32_MAX)


def linear_acc(x: torch.Tensor, w: torch.Tensor, z_x: int, bias: torch.Tensor | None) -> torch.Tensor:
    """int32 accumulators of ``(x - z_x) @ w.T + bias`` for uint8 codes x [..., K] and int8 w [N, K]."""
    lead = x.shape[:-1]
    acc = matmul_codes(x.reshape(-1, x.shape[-1]), w.t(), z_x, 0, UINT8, INT8).to(torch.int64)
    if bias is not None:
        acc = acc + bias.to(torch.int64)
    if acc.numel() and (int(acc.min()) < INT32_RANGE[0] or int(acc.max()) > INT32_RANGE[1]):
        raise OverflowError("linear: accumulator plus bias leaves the int32 range")
    return acc.reshape(*lead, w.shape[0])


def linear(x: torch.Tensor, w: torch.Tensor, z_x: int, bias: torch.Tensor | None, mult: torch.Tensor,
           shift: torch.Tensor, z_out: int, lo: int = 0, hi: int = 255) -> torch.Tensor:
    """Requantized output codes (int64 in [lo, hi]) of a linear layer on uint8 codes."""
    return requantize(linear_acc(x, w, z_x, bias), mult, shift, z_out, lo, hi)
