"""Integer LayerNorm on PTF codes: shifts, two moments, an integer square root, one reciprocal.

Input: uint8 codes ``q[c]`` of C channels (C <= 4096) with one zero point ``z`` and per-channel
power-of-two factors ``alpha[c]`` in 0..3 (PTF: channel c has scale s * 2**alpha[c]).
Output: uint8 codes at the next quantizer's per-tensor scale ``s_o`` and zero point ``z_o``.
Per token:

    X[c]  = (q[c] - z) << alpha[c]                 12-bit signed
    M1    = sum X[c]                               24-bit signed
    M2    = sum X[c]**2                            35-bit unsigned
    V     = C * M2 - M1**2                         47-bit unsigned  (= C**2 * variance / s**2)
    D     = isqrt(V)                               22 bits (<= 1020 C) (= C * std / s)
    k     = bit length of D                        0..24
    R     = floor(2**(15 + k) / D)                 17 bits, in (2**15, 2**16]; R = 0 when D = 0
    n[c]  = round_shift((C * X[c] - M1) * R, k + 15 - FN)        (x - mean) / std with FN = 10
                                                   fractional bits, |n| < 66 * 2**10 (18-bit signed)
    y[c]  = round_shift(G[c] * n[c] + B[c], FN + FG)             34-bit product and sum
    out   = clamp(z_o + y[c], 0, 255)

``G[c] = round(gamma[c] / s_o[c] * 2**FG)`` (17-bit signed: rounding can reach 2**15) and ``B[c] = round(beta[c] / s_o[c] *
2**(FN + FG))`` (s_o[c] is per channel only where the output is itself a PTF point) are the quantized affine parameters, with the per-layer FG chosen offline so the
largest |G| uses 15 bits. A zero-variance token (every X equal) has C * X - M1 = 0 and D = 0, so
n = 0 and the output is the quantized beta: LayerNorm's limit, where FQ-ViT divides by zero.
The only division is one reciprocal per token (``R``); there is no eps, as in FQ-ViT's integer LN.
"""

import numpy as np
import torch

from fqvit.contract import FN, LN_RECIP_BITS, MAX_CHANNELS, MAX_FG

from .requant import round_shift

__all__ = ["FN", "MAX_CHANNELS", "isqrt", "bit_length", "affine_params", "layernorm"]
_SQRT_BITS = 24  # isqrt of a 47-bit value


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(v)) of non-negative int64 values below 2**48, digit by digit (24 steps)."""
    v = v.to(torch.int64)
    root = torch.zeros_like(v)
    for bit in range(_SQRT_BITS - 1, -1, -1):
        cand = root + (1 << bit)
        root = torch.where(cand * cand <= v, cand, root)
    return root


def bit_length(v: torch.Tensor, bits: int = _SQRT_BITS + 1) -> torch.Tensor:
    """Number of significant bits of non-negative int64 values (0 for 0)."""
    v = v.to(torch.int64)
    k = torch.zeros_like(v)
    for b in range(bits):
        k += (v >= (1 << b)).to(torch.int64)
    return k


def affine_params(gamma, beta, s_out, what: str = "layernorm") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Offline: (G, B, FG) quantizing gamma/beta for the output scale s_out (scalar, or per channel
    when the output is a PTF point such as Swin's patch-embedding norm)."""
    s_out = np.asarray(s_out, np.float64)
    g = np.asarray(gamma, np.float64) / s_out
    b = np.asarray(beta, np.float64) / s_out
    top = float(np.abs(g).max())
    fg = 14 - int(np.floor(np.log2(top))) if top > 0 else 14
    fg = min(fg, MAX_FG)
    if fg < 0:
        raise ValueError(f"{what}: |gamma| / s_out = {top:g} is too large for a 16-bit quantized gamma")
    G = torch.from_numpy(np.rint(g * 2.0**fg).astype(np.int64))
    B = torch.from_numpy(np.rint(b * 2.0 ** (fg + FN)).astype(np.int64))
    return G, B, fg


def layernorm(q: torch.Tensor, z: int, alpha: torch.Tensor, G: torch.Tensor, B: torch.Tensor, fg: int,
              z_out: int) -> torch.Tensor:
    """uint8 output codes (int64) of the integer LayerNorm over the last dimension of q."""
    C = q.shape[-1]
    if not 1 <= C <= MAX_CHANNELS:
        raise ValueError(f"layernorm supports 1..{MAX_CHANNELS} channels, got {C}")
    x = torch.bitwise_left_shift(q.to(torch.int64) - z, alpha.to(torch.int64))
    m1 = x.sum(dim=-1, keepdim=True)
    m2 = (x * x).sum(dim=-1, keepdim=True)
    d = isqrt(C * m2 - m1 * m1)
    k = bit_length(d)
    r = torch.where(d > 0, torch.div(torch.bitwise_left_shift(torch.ones_like(d), LN_RECIP_BITS + k),
                                      torch.clamp(d, min=1), rounding_mode="floor"), torch.zeros_like(d))
    n = round_shift((C * x - m1) * r, k + LN_RECIP_BITS - FN)
    y = round_shift(G.to(torch.int64) * n + B.to(torch.int64), FN + fg)
    return torch.clamp(y + z_out, 0, 255)
