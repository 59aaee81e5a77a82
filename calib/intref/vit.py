"""The integer-only ViT/DeiT forward: uint8 image codes in, int32 logits out.

Mirrors calib/vit.py's forward point for point; docs/numerics.md lists the ops.
"""

import torch

from .blocks import REF, Tracer, add, add_tensors, lin, lin_tensors, mha, mha_tensors, mlp, mlp_tensors, norm, norm_tensors

__all__ = ["forward", "tensor_names", "patchify", "PRE_OPS", "BLOCK_OPS", "HEAD_OPS", "op_sequence"]

# The ops `forward` calls, in order (the ops API's method names): what a backend runs, and what the
# bench's analytic model (sw/bench.py) adds up from a simulated first block.
PRE_OPS = ("linear", "add")  # patch embedding, position-embedding add
BLOCK_OPS = ("layernorm", "linear", "attention", "linear", "add",  # norm1, qkv, attention, proj, add
             "layernorm", "linear", "linear", "add")  # norm2, fc1 (GELU on its output), fc2, add
HEAD_OPS = ("layernorm", "linear")  # final LayerNorm, classifier head


def op_sequence(blocks: int, head: bool = True) -> tuple[str, ...]:
    """The ops of a forward through `blocks` blocks; without the head for a partial run."""
    return PRE_OPS + blocks * BLOCK_OPS + (HEAD_OPS if head else ())


def patchify(codes: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, patches, C*ph*pw] in the conv weight's (C, kh, kw) order (host im2col)."""
    B, C, H, W = codes.shape
    ph, pw = patch
    x = codes.reshape(B, C, H // ph, ph, W // pw, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // ph) * (W // pw), C * ph * pw)


def forward(im, codes: torch.Tensor, trace: dict | None = None, ops=REF, depth: int | None = None) -> torch.Tensor:
    """Logits of uint8 image codes [B, C, H, W]. `ops` computes the layers (the reference by
    default, an accelerator backend in sw/); `depth` < the model's runs only the first blocks and
    returns the residual stream after them instead of logits."""
    c = im.config
    rec = Tracer(trace)
    B = codes.shape[0]
    emb = lin(im, "patch_embed", patchify(codes, c["patch_size"]), "input", "embed", ops)
    tokens = rec("embed", torch.cat([im.t("cls").to(torch.int64).expand(B, 1, -1), emb], dim=1))
    r = rec("resid.0", add(im, "resid.0", tokens, "embed", im.t("pos").expand(B, -1, -1), "pos", ops))
    depth = c["depth"] if depth is None else depth
    for i in range(depth):
        p, j = f"blocks.{i}", 2 * i
        h = rec(f"{p}.norm1", norm(im, f"{p}.norm1", r, f"resid.{j}", ops=ops))
        a = mha(im, f"{p}.attn", h, f"{p}.norm1", c["num_heads"], rec, ops=ops)
        r = rec(f"resid.{j + 1}", add(im, f"resid.{j + 1}", r, f"resid.{j}", a, f"{p}.attn.proj", ops))
        h = rec(f"{p}.norm2", norm(im, f"{p}.norm2", r, f"resid.{j + 1}", ops=ops))
        m = mlp(im, f"{p}.mlp", h, f"{p}.norm2", rec, ops)
        r = rec(f"resid.{j + 2}", add(im, f"resid.{j + 2}", r, f"resid.{j + 1}", m, f"{p}.mlp.fc2", ops))
    if depth < c["depth"]:
        return r
    h = rec("norm", norm(im, "norm", r, f"resid.{2 * c['depth']}", ops=ops))
    return rec("logits", lin(im, "head", h[:, 0], "norm", None, ops))


def tensor_names(config: dict, ptf: bool) -> set[str]:
    """Every tensor `forward` reads from a model of this config: with PTF, the shifts of each
    LayerNorm input (the residual stream)."""
    names = [*lin_tensors("patch_embed"), "cls", "pos", *add_tensors("resid.0")]
    for i in range(config["depth"]):
        p, j = f"blocks.{i}", 2 * i
        names += [*norm_tensors(f"{p}.norm1"), *mha_tensors(f"{p}.attn"), *add_tensors(f"resid.{j + 1}"),
                  *norm_tensors(f"{p}.norm2"), *mlp_tensors(f"{p}.mlp"), *add_tensors(f"resid.{j + 2}")]
    names += [*norm_tensors("norm"), *lin_tensors("head")]
    if ptf:
        names += [f"alpha.resid.{j}" for j in range(2 * config["depth"] + 1)]
    return set(names)
