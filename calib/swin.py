"""timm SwinTransformer under FQ-ViT quantization: support check, forward, export.

Same approach as calib/vit.py. Swin adds window attention with a relative position bias (a
quantized constant added to the logits by an integer add, FQ-ViT's ``qact_table``/``qact2``),
shifted windows whose cross-region keys are masked (they get the LIS zero state), patch merging
(LayerNorm over 4 concatenated tokens, so the PTF shifts tile 4x) and an average-pooled head.
Deviation from FQ-ViT: the patch-embedding LayerNorm's output (stage 0's residual stream) is a PTF
point like every other LayerNorm input; FQ-ViT leaves that one per tensor.
"""

import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.swin_transformer import PatchMerging, SwinTransformer, SwinTransformerBlock

from .export import Builder, IntModel
from .intref.swin import window_merge, window_split
from .qsim import QuantSim
from .vit import UnsupportedModelError, export_attention, export_mlp, mlp

__all__ = ["check_supported", "forward", "export"]


def check_supported(model: nn.Module) -> None:
    def need(ok: bool, what: str):
        if not ok:
            raise UnsupportedModelError(f"{type(model).__name__}: {what} is not supported "
                                        "(supported: Swin v1 with windows that tile every stage, average-pool head)")

    need(type(model) is SwinTransformer, "this Swin variant")
    pe = model.patch_embed
    need(isinstance(pe.proj, nn.Conv2d) and pe.proj.stride == pe.proj.kernel_size and isinstance(pe.norm, nn.LayerNorm),
         "a patch embedding other than a non-overlapping convolution with LayerNorm")
    need(model.head.global_pool.pool_type == "avg" and isinstance(model.head.fc, nn.Linear), "a head other than avg-pool + linear")
    need(isinstance(model.norm, nn.LayerNorm), "a final norm other than LayerNorm")
    for stage in model.layers:
        need(isinstance(stage.downsample, (nn.Identity, PatchMerging)), "this downsampling layer")
        for blk in stage.blocks:
            need(type(blk) is SwinTransformerBlock, f"block type {type(blk).__name__}")
            H, W = blk.input_resolution
            need(H % blk.window_size[0] == 0 and W % blk.window_size[1] == 0, "windows that need padding")
            need(not getattr(blk, "dynamic_mask", False), "dynamic masks")
            need(type(blk.mlp) is Mlp and isinstance(blk.mlp.act, nn.GELU), "an MLP other than fc1-GELU-fc2")


def _mask(blk: SwinTransformerBlock, windows: int) -> torch.Tensor | None:
    """timm's additive -100/0 shift mask as a boolean key mask [windows, 1, N, N]."""
    if blk.attn_mask is None:
        return None
    m = blk.attn_mask != 0
    return m.repeat(windows // m.shape[0], 1, 1).unsqueeze(1)


def window_attention(sim: QuantSim, p: str, blk: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    B, H, W, C = x.shape
    attn = blk.attn
    win = window_split(x, blk.window_size, blk.shift_size)
    nw, N, _ = win.shape
    heads = attn.num_heads
    qkv = sim.act(f"{p}.qkv", sim.linear(f"{p}.qkv", attn.qkv, win))
    q, k, v = qkv.reshape(nw, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    logits = sim.act(f"{p}.logits", (q @ k.transpose(-2, -1)) * attn.scale)
    logits = sim.act(f"{p}.biased", logits + sim.act(f"{p}.rel_bias", attn._get_rel_pos_bias()))
    probs = sim.softmax(f"{p}.softmax", logits, f"{p}.biased", _mask(blk, nw))
    o = sim.act(f"{p}.attn_v", probs @ v).transpose(1, 2).reshape(nw, N, C)
    o = sim.act(f"{p}.proj", sim.linear(f"{p}.proj", attn.proj, o))
    return window_merge(o, blk.window_size, blk.shift_size, B, H, W)


def forward(model: SwinTransformer, x: torch.Tensor, sim: QuantSim) -> torch.Tensor:
    x = sim.input(x)
    pe = model.patch_embed
    t = sim.act("patch_embed", sim.conv("patch_embed", pe.proj, x).permute(0, 2, 3, 1))
    r = sim.layernorm(pe.norm, t, "patch_embed", "patch_embed.norm", ptf=True)
    point = "patch_embed.norm"
    for s, stage in enumerate(model.layers):
        if isinstance(stage.downsample, PatchMerging):
            p = f"layers.{s}.downsample"
            B, H, W, C = r.shape
            cat = r.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
            h = sim.layernorm(stage.downsample.norm, cat, point, f"{p}.norm")
            r = sim.act(f"{p}.reduction", sim.linear(f"{p}.reduction", stage.downsample.reduction, h), ptf=True)
            point = f"{p}.reduction"
        for b, blk in enumerate(stage.blocks):
            p = f"layers.{s}.blocks.{b}"
            h = sim.layernorm(blk.norm1, r, point, f"{p}.norm1")
            r = sim.act(f"{p}.add1", r + window_attention(sim, f"{p}.attn", blk, h), ptf=True)
            h = sim.layernorm(blk.norm2, r, f"{p}.add1", f"{p}.norm2")
            r = sim.act(f"{p}.add2", r + mlp(sim, f"{p}.mlp", blk.mlp, h), ptf=True)
            point = f"{p}.add2"
    h = sim.layernorm(model.norm, r, point, "norm")
    pooled = sim.act("pool", h.mean(dim=(1, 2)))
    return sim.logits(sim.linear("head", model.head.fc, pooled))


def export(model: SwinTransformer, sim: QuantSim, name: str) -> IntModel:
    pe = model.patch_embed
    blocks = []
    for s, stage in enumerate(model.layers):
        for blk in stage.blocks:
            blocks.append({"stage": s, "heads": blk.attn.num_heads, "window": list(blk.window_size),
                           "shift": list(blk.shift_size), "resolution": list(blk.input_resolution)})
    config = {
        "img_size": list(pe.img_size), "patch_size": list(pe.patch_size), "in_chans": pe.proj.in_channels,
        "embed_dim": pe.proj.out_channels, "depths": [len(st.blocks) for st in model.layers],
        "downsample": [isinstance(st.downsample, PatchMerging) for st in model.layers], "blocks": blocks,
        "num_classes": model.head.fc.out_features,
    }
    b = Builder(sim, "swin", name, config)
    b.linear("patch_embed", "input", "patch_embed")
    b.layernorm("patch_embed.norm", pe.norm, "patch_embed.norm")
    point = "patch_embed.norm"
    for s, stage in enumerate(model.layers):
        if isinstance(stage.downsample, PatchMerging):
            p = f"layers.{s}.downsample"
            b.layernorm(f"{p}.norm", stage.downsample.norm, f"{p}.norm")
            b.linear(f"{p}.reduction", f"{p}.norm", f"{p}.reduction")
            point = f"{p}.reduction"
        for i, blk in enumerate(stage.blocks):
            p = f"layers.{s}.blocks.{i}"
            C = blk.norm1.normalized_shape[0]
            b.layernorm(f"{p}.norm1", blk.norm1, f"{p}.norm1")
            export_attention(b, f"{p}.attn", blk.attn, f"{p}.norm1", blk.attn._get_rel_pos_bias()[0])
            b.add(f"{p}.add1", point, f"{p}.attn.proj", f"{p}.add1", C)
            b.layernorm(f"{p}.norm2", blk.norm2, f"{p}.norm2")
            export_mlp(b, f"{p}.mlp", f"{p}.norm2")
            b.add(f"{p}.add2", f"{p}.add1", f"{p}.mlp.fc2", f"{p}.add2", C)
            point = f"{p}.add2"
    b.layernorm("norm", model.norm, "norm")
    H, W = blocks[-1]["resolution"]
    b.matmul("pool", b.qp("norm").base / (H * W * b.qp("pool").base))
    b.linear("head", "pool", None)
    return b.im
