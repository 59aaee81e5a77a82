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

__all__ = ["Tracer", "RefOps", "REF", "lin", "norm", "add", "mha", "mlp",
           "lin_tensors", "norm_tensors", "add_tensors", "mha_tensors", "mlp_tensors"]


class RefOps:
    """The ops the layers below are made of, as the integer reference computes them.

    Every layer function takes an ``ops`` object with these methods; the accelerator driver
    (sw/ops.py) passes one that runs them on a backend instead, so the network's wiring exists
    once, here and in vit.py, and the backend's every tensor can be compared with this one's.
    """

    def linear(self, x, w, z_x: int, bias, mult, shift, z_out: int, wide: bool, gelu_table=None):
        """Codes (uint8, or int32 if `wide`) of x @ w.T + bias requantized, and their GELU codes
        when `gelu_table` is given (the accelerator's matmul epilogue computes both)."""
        if wide:
            out = linear(x, w, z_x, bias, mult, shift, 0, *INT32_RANGE).to(torch.int32)
        else:
            out = linear(x, w, z_x, bias, mult, shift, z_out)
        return out, (None if gelu_table is None else gelu(out, gelu_table))

    def logits(self, q, k, z: int, mult: int, shift: int, z_out: int):
        """Requantized Q.K^T codes; q, k [..., N, hd] share the zero point `z`."""
        return requantize(matmul_codes(q, k.transpose(-2, -1), z, z, UINT8, UINT8), torch.tensor(mult),
                          torch.tensor(shift), z_out)

    def softmax_lis(self, logits, table, rule: tuple[int, int], mask):
        return lis_codes(logits, table, rule, mask)

    def attn_v(self, probs, v, z_v: int, mult: int, shift: int, z_out: int):
        return requantize(attnv_shift(probs, v, z_v), torch.tensor(mult), torch.tensor(shift), z_out)

    def attention(self, q, k, v, z: int, logits_rq: tuple[int, int, int], table, rule: tuple[int, int], mask,
                  attn_v_rq: tuple[int, int, int]):
        """The LIS attention chain (the accelerator runs it on chip): Q.K^T requantized to logit
        codes (`logits_rq`: mult, shift, zero), the LIS softmax, x V requantized (`attn_v_rq`).
        Returns (logits, probs, out); a backend that cannot read the first two back gives None."""
        logits = self.logits(q, k, z, *logits_rq)
        probs = self.softmax_lis(logits, table, rule, mask)
        return logits, probs, self.attn_v(probs, v, z, *attn_v_rq)

    def layernorm(self, x, z: int, alpha, G, B, fg: int, z_out: int):
        return layernorm(x, z, alpha, G, B, fg, z_out)

    def add(self, a, z_a: int, ma, b, z_b: int, mb, shift: int, z_out: int):
        return add_requant(a, z_a, ma, b, z_b, mb, shift, z_out)


REF = RefOps()


class Tracer:
    """Records named intermediates when given a dict; a no-op otherwise."""

    def __init__(self, trace: dict | None):
        self.trace = trace

    def __call__(self, name: str, value: torch.Tensor) -> torch.Tensor:
        if self.trace is not None:
            self.trace[name] = value
        return value


def lin(im, name: str, x: torch.Tensor, in_point: str, out_point: str | None, ops=REF, gelu_table=None):
    """Linear layer `name` on codes of `in_point`; out_point None gives int32 logits. With
    `gelu_table`, returns (codes, GELU codes)."""
    t = im.tensors
    out, g = ops.linear(x, t[f"{name}.w"], im.zero(in_point), t[f"{name}.b"], t[f"{name}.mult"],
                        t[f"{name}.shift"], 0 if out_point is None else im.zero(out_point), out_point is None,
                        gelu_table)
    return out if gelu_table is None else (out, g)


def norm(im, name: str, x: torch.Tensor, in_point: str, tile: int = 1, ops=REF) -> torch.Tensor:
    """LayerNorm `name` (its output point has the same name) on PTF codes of `in_point`.

    `tile` repeats the input's PTF shifts (Swin patch merging concatenates 4 tokens' channels).
    """
    alpha = im.alpha(in_point, x.shape[-1] // tile).repeat(tile)
    return ops.layernorm(x, im.zero(in_point), alpha, im.t(f"{name}.G"), im.t(f"{name}.B"), im.i(f"{name}.fg"),
                         im.zero(name))


def add(im, name: str, a: torch.Tensor, a_point: str, b: torch.Tensor, b_point: str, ops=REF) -> torch.Tensor:
    """Residual add `name` (output point of the same name)."""
    return ops.add(a, im.zero(a_point), im.t(f"{name}.ma"), b, im.zero(b_point), im.t(f"{name}.mb"),
                   im.i(f"{name}.shift"), im.zero(name))


def _requant_args(im, name: str) -> tuple[int, int, int]:
    return im.i(f"{name}.mult"), im.i(f"{name}.shift"), im.zero(name)


def mha(im, p: str, x: torch.Tensor, in_point: str, heads: int, rec: Tracer,
        bias=None, mask: torch.Tensor | None = None, ops=REF) -> torch.Tensor:
    """Multi-head attention on [B, N, C] codes: qkv, Q.K^T, softmax (LIS or uint8), x V, proj.

    `bias(logits)` (Swin) adds the relative position bias to the logit codes before the softmax,
    returning (codes, point); `mask` [B or 1, 1, N, N] (bool) excludes keys.
    """
    B, N, C = x.shape
    hd = C // heads
    qkv = rec(f"{p}.qkv", lin(im, f"{p}.qkv", x, in_point, f"{p}.qkv", ops))
    q, k, v = qkv.reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
    z = im.zero(f"{p}.qkv")
    table = im.t(f"{p}.softmax.exp")
    rule = (im.i(f"{p}.softmax.num"), im.i(f"{p}.softmax.den")) if im.quant["lis"] else None
    if im.quant["lis"] and bias is None:  # the chain a backend runs as one op
        logits, probs, o = ops.attention(q, k, v, z, _requant_args(im, f"{p}.logits"), table, rule, mask,
                                         _requant_args(im, f"{p}.attn_v"))
        for name, value in ((f"{p}.logits", logits), (f"{p}.softmax", probs)):
            if value is not None:
                rec(name, value)
        o = rec(f"{p}.attn_v", o).transpose(1, 2).reshape(B, N, C)
        return rec(f"{p}.proj", lin(im, f"{p}.proj", o, f"{p}.attn_v", f"{p}.proj", ops))
    logits = rec(f"{p}.logits", ops.logits(q, k, z, *_requant_args(im, f"{p}.logits")))
    if bias is not None:
        logits, logit_point = bias(logits)
        rec(logit_point, logits)
    if im.quant["lis"]:
        probs = rec(f"{p}.softmax", ops.softmax_lis(logits, table, rule, mask))
        o = ops.attn_v(probs, v, z, *_requant_args(im, f"{p}.attn_v"))
    else:
        if ops is not REF:
            raise NotImplementedError(
                "the accelerator implements the 4-bit LIS softmax only; quantize the model with LIS (--lis)")
        probs = rec(f"{p}.softmax", softmax_u8(logits, table, im.i(f"{p}.softmax.inv_mult"),
                                               im.i(f"{p}.softmax.inv_shift"), im.zero(f"{p}.softmax"), mask))
        acc = matmul_codes(probs, v, im.zero(f"{p}.softmax"), z, UINT8, UINT8)
        o = requantize(acc, *(torch.tensor(v) for v in _requant_args(im, f"{p}.attn_v")[:2]), im.zero(f"{p}.attn_v"))
    o = rec(f"{p}.attn_v", o).transpose(1, 2).reshape(B, N, C)
    return rec(f"{p}.proj", lin(im, f"{p}.proj", o, f"{p}.attn_v", f"{p}.proj", ops))


def mlp(im, p: str, x: torch.Tensor, in_point: str, rec: Tracer, ops=REF) -> torch.Tensor:
    """fc1 -> uint8 -> GELU table -> fc2."""
    h, g = lin(im, f"{p}.fc1", x, in_point, f"{p}.fc1", ops, gelu_table=im.t(f"{p}.gelu"))
    rec(f"{p}.fc1", h)
    g = rec(f"{p}.gelu", g)
    return rec(f"{p}.fc2", lin(im, f"{p}.fc2", g, f"{p}.gelu", f"{p}.fc2", ops))


# The tensors each layer above reads from the IntModel: export.load checks that a file holds
# exactly those of its network, so a missing tensor cannot quietly become a default.
def lin_tensors(name: str) -> list[str]:
    return [f"{name}.{k}" for k in ("w", "b", "mult", "shift")]


def norm_tensors(name: str) -> list[str]:
    return [f"{name}.G", f"{name}.B"]


def add_tensors(name: str) -> list[str]:
    return [f"{name}.ma", f"{name}.mb"]


def mha_tensors(p: str) -> list[str]:
    return [*lin_tensors(f"{p}.qkv"), f"{p}.softmax.exp", *lin_tensors(f"{p}.proj")]


def mlp_tensors(p: str) -> list[str]:
    return [*lin_tensors(f"{p}.fc1"), f"{p}.gelu", *lin_tensors(f"{p}.fc2")]
