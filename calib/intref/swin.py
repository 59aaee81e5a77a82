"""The integer-only Swin forward: uint8 image codes in, int32 logits out.

Mirrors calib/swin.py. Window partition, cyclic shift and patch-merge gathering are pure data
movement on codes; the shift mask only selects which keys take part in a softmax row.
"""

import torch

from .blocks import Tracer, add, add_tensors, lin, lin_tensors, mha, mha_tensors, mlp, mlp_tensors, norm, norm_tensors
from .requant import requantize
from .vit import patchify

__all__ = ["window_split", "window_merge", "shift_mask", "forward", "tensor_names"]


def window_split(x: torch.Tensor, window, shift) -> torch.Tensor:
    """[B, H, W, C] -> [B * windows, wh * ww, C], after the cyclic shift by -shift."""
    B, H, W, C = x.shape
    wh, ww = window
    if any(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    x = x.reshape(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_merge(win: torch.Tensor, window, shift, B: int, H: int, W: int) -> torch.Tensor:
    """Inverse of window_split."""
    wh, ww = window
    C = win.shape[-1]
    x = win.reshape(B, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
    if any(shift):
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x


def shift_mask(H: int, W: int, window, shift) -> torch.Tensor | None:
    """[windows, 1, N, N] bool: True where query and key come from different regions of the
    cyclically shifted map (Swin's -100 mask), None without a shift."""
    if not any(shift):
        return None
    region = torch.zeros((1, H, W, 1), dtype=torch.int64)
    cnt = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            region[:, h[0]:h[1], w[0]:w[1], :] = cnt
            cnt += 1
    ids = window_split(region, window, (0, 0))[..., 0]
    return (ids.unsqueeze(1) != ids.unsqueeze(2)).unsqueeze(1)


def forward(im, codes: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
    c = im.config
    rec = Tracer(trace)
    B = codes.shape[0]
    gh, gw = c["img_size"][0] // c["patch_size"][0], c["img_size"][1] // c["patch_size"][1]
    t = rec("patch_embed", lin(im, "patch_embed", patchify(codes, c["patch_size"]), "input", "patch_embed"))
    r = rec("patch_embed.norm", norm(im, "patch_embed.norm", t, "patch_embed")).reshape(B, gh, gw, -1)
    point = "patch_embed.norm"
    blocks = iter(c["blocks"])
    for s, depth in enumerate(c["depths"]):
        if c["downsample"][s]:
            p = f"layers.{s}.downsample"
            _, H, W, C = r.shape
            cat = r.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
            h = rec(f"{p}.norm", norm(im, f"{p}.norm", cat, point, tile=4))
            r = rec(f"{p}.reduction", lin(im, f"{p}.reduction", h, f"{p}.norm", f"{p}.reduction"))
            point = f"{p}.reduction"
        for i in range(depth):
            blk = next(blocks)
            p, a = f"layers.{s}.blocks.{i}", f"layers.{s}.blocks.{i}.attn"
            _, H, W, C = r.shape
            h = rec(f"{p}.norm1", norm(im, f"{p}.norm1", r, point))
            win = window_split(h, blk["window"], blk["shift"])
            mask = shift_mask(H, W, blk["window"], blk["shift"])
            if mask is not None:
                mask = mask.repeat(B, 1, 1, 1)
            bias = im.t(f"{a}.rel_bias")

            def add_bias(logits, a=a, bias=bias):
                return add(im, f"{a}.biased", logits, f"{a}.logits", bias, f"{a}.rel_bias"), f"{a}.biased"

            o = mha(im, a, win, f"{p}.norm1", blk["heads"], rec, bias=add_bias, mask=mask)
            o = window_merge(o, blk["window"], blk["shift"], B, H, W)
            r = rec(f"{p}.add1", add(im, f"{p}.add1", r, point, o, f"{a}.proj"))
            h = rec(f"{p}.norm2", norm(im, f"{p}.norm2", r, f"{p}.add1"))
            m = mlp(im, f"{p}.mlp", h, f"{p}.norm2", rec)
            r = rec(f"{p}.add2", add(im, f"{p}.add2", r, f"{p}.add1", m, f"{p}.mlp.fc2"))
            point = f"{p}.add2"
    h = rec("norm", norm(im, "norm", r, point))
    total = (h - im.zero("norm")).sum(dim=(1, 2))
    pooled = rec("pool", requantize(total, torch.tensor(im.i("pool.mult")), torch.tensor(im.i("pool.shift")),
                                    im.zero("pool")))
    return rec("logits", lin(im, "head", pooled, "pool", None))


def tensor_names(config: dict, ptf: bool) -> set[str]:
    """Every tensor `forward` reads from a model of this config: with PTF, the shifts of each
    LayerNorm input but the first (the patch embedding's output is per tensor)."""
    names = [*lin_tensors("patch_embed"), *norm_tensors("patch_embed.norm")]
    ptf_points = ["patch_embed.norm"]
    for s, depth in enumerate(config["depths"]):
        if config["downsample"][s]:
            p = f"layers.{s}.downsample"
            names += [*norm_tensors(f"{p}.norm"), *lin_tensors(f"{p}.reduction")]
            ptf_points.append(f"{p}.reduction")
        for i in range(depth):
            p, a = f"layers.{s}.blocks.{i}", f"layers.{s}.blocks.{i}.attn"
            names += [*norm_tensors(f"{p}.norm1"), *mha_tensors(a), f"{a}.rel_bias", *add_tensors(f"{a}.biased"),
                      *add_tensors(f"{p}.add1"), *norm_tensors(f"{p}.norm2"), *mlp_tensors(f"{p}.mlp"),
                      *add_tensors(f"{p}.add2")]
            ptf_points += [f"{p}.add1", f"{p}.add2"]
    names += [*norm_tensors("norm"), *lin_tensors("head")]
    if ptf:
        names += [f"alpha.{point}" for point in ptf_points]
    return set(names)
