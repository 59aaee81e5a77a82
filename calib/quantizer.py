"""Uniform quantization: the (scale, zero point) parameters, fake quantization, int8 weights.

Follows FQ-ViT (``models/ptq/quantizer/uniform.py``): codes ``q = clamp(round(x / s) + z, lo, hi)``
with torch's round-half-to-even, dequantized ``(q - z) * s``. Activations are uint8 asymmetric per
tensor (``s = (max - min) / 255``, ``z = clamp(-round(min / s), 0, 255)``); PTF activations have a
per-channel scale ``s * 2**alpha[c]`` with one shared zero point. Weights are int8 symmetric per
output channel from their absolute maximum: ``/127`` in our mode, FQ-ViT's ``/127.5`` (which
clips the largest positive weight to 127) in official mode.
"""

from dataclasses import dataclass

import torch

__all__ = ["QParams", "asymmetric", "fake_quant", "quantize", "WeightQ", "quantize_weight"]

EPS = torch.finfo(torch.float32).eps


@dataclass
class QParams:
    """uint8 activation parameters. `scale` is a 0-d tensor, or [C] for PTF (then `alpha` is [C])."""

    scale: torch.Tensor
    zero: int
    alpha: torch.Tensor | None = None
    lo: int = 0
    hi: int = 255

    @property
    def base(self) -> float:
        """The per-tensor scale (PTF: the finest one, s with alpha = 0)."""
        return float(self.scale) if self.alpha is None else float(self.scale[0] / 2.0 ** int(self.alpha[0]))


def asymmetric(lo_val: torch.Tensor, hi_val: torch.Tensor, include_zero: bool = True,
               qmax: int = 255) -> tuple[torch.Tensor, int]:
    """(scale, zero) of the asymmetric quantizer for the range [lo_val, hi_val].

    ``include_zero`` widens the range to contain 0 (so 0.0 is exactly a code). FQ-ViT does not:
    a range above 0 then gets zero point 0 and its top is clipped (official mode keeps that).
    """
    if include_zero:
        lo_val, hi_val = torch.clamp(lo_val, max=0.0), torch.clamp(hi_val, min=0.0)
    scale = torch.clamp((hi_val - lo_val) / qmax, min=EPS).to(torch.float32)
    zero = int(torch.clamp(-torch.round(lo_val / scale), 0, qmax))
    return scale, zero


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integer codes (int64) of x; PTF scales broadcast over the last dimension."""
    return torch.clamp(torch.round(x / qp.scale) + qp.zero, qp.lo, qp.hi).to(torch.int64)


def fake_quant(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Quantize and dequantize (float)."""
    return (torch.clamp(torch.round(x / qp.scale) + qp.zero, qp.lo, qp.hi) - qp.zero) * qp.scale


@dataclass
class WeightQ:
    """An int8 per-output-channel weight: codes (int8, original shape) and scales [out]."""

    codes: torch.Tensor
    scale: torch.Tensor

    def dequant(self) -> torch.Tensor:
        return self.codes.to(torch.float32) * self.scale.view(-1, *([1] * (self.codes.dim() - 1)))


def quantize_weight(w: torch.Tensor, official: bool = False) -> WeightQ:
    """Symmetric int8 quantization of a linear [out, in] or conv [out, ...] weight, per output channel."""
    w = w.detach().to(torch.float32)
    absmax = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    scale = torch.clamp(absmax / (127.5 if official else 127.0), min=EPS)
    shaped = scale.view(-1, *([1] * (w.dim() - 1)))
    codes = torch.clamp(torch.round(w / shaped), -128, 127).to(torch.int8)
    return WeightQ(codes, scale)
