"""The integer model's layers, each reading its parameters from an IntModel by name.

These compose the ops of this package (gemm/linear, requant, layernorm, softmax, attnv, gelu,
residual) into the layers a ViT is made of; calib/intref/vit.py and swin.py wire them up. Every
value is an integer tensor; `trace` (a dict, optional) receives each named intermediate so the
driver and testbenches can compare any tensor bit for bit.
"""

import torch

from .attnv import attnv_shift
from .gelu import gelu
from .gemm import UINT8, matmul_codes
from .layernorm import layernorm
from .linear import INT32_RANGE, linear
from .requant import requantize
from .residual import add_requant
from .softmax import lis_codes, softmax_u8

__all__ = ["Tracer", "lin", "norm", "add", "mha", "mlp"]


class Tracer:
    """Records named intermediates when given a dict; a no-op otherwise."""

    def __init__(self, trace: dict | None):
        self.trace = trace

    def __call__(self, name: str, value: torch.Tensor) -> torch.Tensor:
        if self.trace is not None:
            self.trace[name] = value
        return value


def lin(im, name: str, x: torch.Tensor, in_point: str, out_point: str | None) -> torch.Tensor:
    """Linear layer `name` on codes of `in_point`; out_point None gives int32 logits."""
    t = im.tensors
    args = (x, t[f"{name}.w"], im.zero(in_point), t.get(f"{name}.b"), t[f"{name}.mult"], t[f"{name}.shift"])
    if out_point is None:
        return linear(*args, 0, *INT32_RANGE).to(torch.int32)
    return linear(*args, im.zero(out_point))


def norm(im, name: str, x: torch.Tensor, in_point: str, tile: int = 1) -> torch.Tensor:
    """LayerNorm `name` (its output point has the same name) on PTF codes of `in_point`.

    `tile` repeats the input's PTF shifts (Swin patch merging concatenates 4 tokens' channels).
    """
    alpha = im.alpha(in_point, x.shape[-1] // tile).repeat(tile)
    return layernorm(x, im.zero(in_point), alpha, im.t(f"{name}.G"), im.t(f"{name}.B"), im.i(f"{name}.fg"),
                     im.zero(name))


def add(im, name: str, a: torch.Tensor, a_point: str, b: torch.Tensor, b_point: str) -> torch.Tensor:
    """Residual add `name` (output point of the same name)."""
    return add_requant(a, im.zero(a_point), im.t(f"{name}.ma"), b, im.zero(b_point), im.t(f"{name}.mb"),
                       im.i(f"{name}.shift"), im.zero(name))


def _requant(im, name: str, acc: torch.Tensor) -> torch.Tensor:
    return requantize(acc, torch.tensor(im.i(f"{name}.mult")), torch.tensor(im.i(f"{name}.shift")), im.zero(name))


def mha(im, p: str, x: torch.Tensor, in_point: str, heads: int, rec: Tracer,
        bias=None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention on [B, N, C] codes: qkv, Q.K^T, softmax (LIS or uint8), x V, proj.

    `bias(logits)` (Swin) adds the relative position bias to the logit codes before the softmax,
    returning (codes, point); `mask` [B or 1, 1, N, N] (bool) excludes keys.
    """
    B, N, C = x.shape
    hd = C // heads
    qkv = rec(f"{p}.qkv", lin(im, f"{p}.qkv", x, in_point, f"{p}.qkv"))
    q, k, v = qkv.reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
    z = im.zero(f"{p}.qkv")
    logits = rec(f"{p}.logits", _requant(im, f"{p}.logits", matmul_codes(q, k.transpose(-2, -1), z, z, UINT8, UINT8)))
    logit_point = f"{p}.logits"
    if bias is not None:
        logits, logit_point = bias(logits)
        rec(logit_point, logits)
    table = im.t(f"{p}.softmax.exp")
    if im.quant["lis"]:
        probs = lis_codes(logits, table, (im.i(f"{p}.softmax.num"), im.i(f"{p}.softmax.den")), mask)
        acc = attnv_shift(probs, v, z)
    else:
        probs = softmax_u8(logits, table, im.i(f"{p}.softmax.inv_mult"), im.i(f"{p}.softmax.inv_shift"),
                           im.zero(f"{p}.softmax"), mask)
        acc = matmul_codes(probs, v, im.zero(f"{p}.softmax"), z, UINT8, UINT8)
    rec(f"{p}.softmax", probs)
    o = rec(f"{p}.attn_v", _requant(im, f"{p}.attn_v", acc)).transpose(1, 2).reshape(B, N, C)
    return rec(f"{p}.proj", lin(im, f"{p}.proj", o, f"{p}.attn_v", f"{p}.proj"))


def mlp(im, p: str, x: torch.Tensor, in_point: str, rec: Tracer) -> torch.Tensor:
    """fc1 -> uint8 -> GELU table -> fc2."""
    h = rec(f"{p}.fc1", lin(im, f"{p}.fc1", x, in_point, f"{p}.fc1"))
    h = rec(f"{p}.gelu", gelu(h, im.t(f"{p}.gelu")))
    return rec(f"{p}.fc2", lin(im, f"{p}.fc2", h, f"{p}.gelu", f"{p}.fc2"))
