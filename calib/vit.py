"""timm VisionTransformer (ViT, DeiT) under FQ-ViT quantization: support check, forward, export.

We own the forward instead of patching timm's modules: timm's fused attention hides the softmax,
and one explicit forward lets float, calibration and fake-quant share every line (calib/qsim.py).
Quantization points follow FQ-ViT's ``vit_quant.py`` (see docs/numerics.md for the list); the
residual stream ``resid.j`` (LayerNorm inputs) is where PTF applies.
"""

import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.vision_transformer import Block, VisionTransformer

from fqvit.contract import EXP_BITS

from .export import Builder, IntModel
from .qsim import QuantSim

__all__ = ["UnsupportedModelError", "check_supported", "forward", "export", "attention"]


class UnsupportedModelError(ValueError):
    """A timm model that uses a feature the quantized forward does not implement."""


def check_supported(model: nn.Module) -> None:
    """Raise UnsupportedModelError naming the first feature outside plain ViT/DeiT."""
    def need(ok: bool, what: str):
        if not ok:
            raise UnsupportedModelError(f"{type(model).__name__}: {what} is not supported "
                                        "(supported: class-token ViT/DeiT with pre-norm blocks, GELU MLP, LayerNorm)")

    need(type(model) is VisionTransformer, "this VisionTransformer subclass (e.g. distilled DeiT)")
    need(model.cls_token is not None and model.global_pool == "token", "pooling other than the class token")
    need(model.reg_token is None and not model.no_embed_class, "register tokens / pos-embed without class")
    need(model.pos_embed is not None and not model.dynamic_img_size, "missing or dynamic position embedding")
    need(model.attn_pool is None and isinstance(model.fc_norm, nn.Identity), "attention pooling / fc_norm")
    need(isinstance(model.norm_pre, nn.Identity) and isinstance(model.patch_embed.norm, nn.Identity), "norm_pre")
    need(isinstance(model.head, nn.Linear), "a model without a linear classifier head")
    need(isinstance(model.norm, nn.LayerNorm), "a final norm other than LayerNorm")
    proj = model.patch_embed.proj
    need(isinstance(proj, nn.Conv2d) and proj.stride == proj.kernel_size and proj.padding == (0, 0),
         "a patch embedding other than a non-overlapping convolution")
    for blk in model.blocks:
        need(type(blk) is Block, f"block type {type(blk).__name__}")
        need(isinstance(blk.ls1, nn.Identity) and isinstance(blk.ls2, nn.Identity), "layer scale")
        need(isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm), "norms other than LayerNorm")
        a = blk.attn
        need(isinstance(a.q_norm, nn.Identity) and isinstance(a.k_norm, nn.Identity), "qk-norm")
        need(isinstance(a.norm, nn.Identity) and a.gate is None, "attention scale-norm / gating")
        need(a.attn_dim == model.embed_dim, "attention width different from the embedding width")
        need(type(blk.mlp) is Mlp and isinstance(blk.mlp.act, nn.GELU) and isinstance(blk.mlp.norm, nn.Identity),
             "an MLP other than fc1-GELU-fc2")


def attention(sim: QuantSim, p: str, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Multi-head self attention with every FQ-ViT quantization point."""
    B, N, C = x.shape
    H, hd = attn.num_heads, attn.head_dim
    qkv = sim.act(f"{p}.qkv", sim.linear(f"{p}.qkv", attn.qkv, x))
    q, k, v = qkv.reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
    logits = sim.act(f"{p}.logits", (q @ k.transpose(-2, -1)) * attn.scale)
    probs = sim.softmax(f"{p}.softmax", logits, f"{p}.logits")
    o = sim.act(f"{p}.attn_v", probs @ v).transpose(1, 2).reshape(B, N, C)
    return sim.act(f"{p}.proj", sim.linear(f"{p}.proj", attn.proj, o))


def mlp(sim: QuantSim, p: str, m: Mlp, x: torch.Tensor) -> torch.Tensor:
    h = sim.gelu(p, m.act, sim.linear(f"{p}.fc1", m.fc1, x))
    return sim.act(f"{p}.fc2", sim.linear(f"{p}.fc2", m.fc2, h))


def forward(model: VisionTransformer, x: torch.Tensor, sim: QuantSim) -> torch.Tensor:
    """Logits of `model` on normalized images, in the mode `sim` is in."""
    x = sim.input(x)
    B = x.shape[0]
    t = sim.conv("patch_embed", model.patch_embed.proj, x).flatten(2).transpose(1, 2)
    t = sim.act("embed", torch.cat([model.cls_token.expand(B, -1, -1), t], dim=1))
    r = sim.act("resid.0", t + sim.act("pos", model.pos_embed), ptf=True)
    for i, blk in enumerate(model.blocks):
        p, j = f"blocks.{i}", 2 * i
        h = sim.layernorm(blk.norm1, r, f"resid.{j}", f"{p}.norm1")
        r = sim.act(f"resid.{j + 1}", r + attention(sim, f"{p}.attn", blk.attn, h), ptf=True)
        h = sim.layernorm(blk.norm2, r, f"resid.{j + 1}", f"{p}.norm2")
        r = sim.act(f"resid.{j + 2}", r + mlp(sim, f"{p}.mlp", blk.mlp, h), ptf=True)
    h = sim.layernorm(model.norm, r, f"resid.{2 * len(model.blocks)}", "norm")
    return sim.logits(sim.linear("head", model.head, h[:, 0]))


def export_attention(b: Builder, p: str, attn: nn.Module, in_point: str, rel_bias: torch.Tensor | None = None) -> None:
    """qkv, Q.K^T requantization, (Swin: the relative position bias add), softmax, x V, proj."""
    lis = b.sim.cfg.lis
    b.linear(f"{p}.qkv", in_point, f"{p}.qkv")
    s_qkv = b.qp(f"{p}.qkv").base
    b.matmul(f"{p}.logits", s_qkv * s_qkv * attn.scale / b.qp(f"{p}.logits").base)
    softmax_in = f"{p}.logits"
    if rel_bias is not None:
        b.constant(f"{p}.rel_bias", rel_bias, f"{p}.rel_bias")
        b.add(f"{p}.biased", f"{p}.logits", f"{p}.rel_bias", f"{p}.biased", rel_bias.shape[-1])
        softmax_in = f"{p}.biased"
    b.softmax(f"{p}.softmax", softmax_in)
    s_p = 2.0**-EXP_BITS if lis else b.qp(f"{p}.softmax").base
    b.matmul(f"{p}.attn_v", s_p * s_qkv / b.qp(f"{p}.attn_v").base)
    b.linear(f"{p}.proj", f"{p}.attn_v", f"{p}.proj")


def export_mlp(b: Builder, p: str, in_point: str) -> None:
    b.linear(f"{p}.fc1", in_point, f"{p}.fc1")
    b.gelu(p)
    b.linear(f"{p}.fc2", f"{p}.gelu", f"{p}.fc2")


def export(model: VisionTransformer, sim: QuantSim, name: str) -> IntModel:
    """The integer model of a calibrated ViT."""
    D = model.embed_dim
    config = {
        "img_size": list(model.patch_embed.img_size), "patch_size": list(model.patch_embed.patch_size),
        "in_chans": model.patch_embed.proj.in_channels, "embed_dim": D, "depth": len(model.blocks),
        "num_heads": model.blocks[0].attn.num_heads, "mlp_hidden": model.blocks[0].mlp.fc1.out_features,
        "num_classes": model.head.out_features, "tokens": model.patch_embed.num_patches + 1,
    }
    b = Builder(sim, "vit", name, config)
    b.linear("patch_embed", "input", "embed")
    b.constant("cls", model.cls_token[0, 0], "embed")
    b.constant("pos", model.pos_embed[0], "pos")
    b.add("resid.0", "embed", "pos", "resid.0", D)
    for i, blk in enumerate(model.blocks):
        p, j = f"blocks.{i}", 2 * i
        b.layernorm(f"{p}.norm1", blk.norm1, f"{p}.norm1")
        export_attention(b, f"{p}.attn", blk.attn, f"{p}.norm1")
        b.add(f"resid.{j + 1}", f"resid.{j}", f"{p}.attn.proj", f"resid.{j + 1}", D)
        b.layernorm(f"{p}.norm2", blk.norm2, f"{p}.norm2")
        export_mlp(b, f"{p}.mlp", f"{p}.norm2")
        b.add(f"resid.{j + 2}", f"resid.{j + 1}", f"{p}.mlp.fc2", f"resid.{j + 2}", D)
    b.layernorm("norm", model.norm, "norm")
    b.linear("head", "norm", None)
    return b.im
