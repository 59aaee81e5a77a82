"""Which models calib can quantize, and how they are built and loaded (no downloads, ever).

``digits-vit`` is the embedded default (calib/digits.py: trained locally, cached). Any timm name
whose architecture calib/vit.py or calib/swin.py supports is built with random weights, or with
``--checkpoint FILE`` loaded with strict key matching (FQ-ViT loads with strict=False, so a
mismatched checkpoint silently leaves layers random there).
"""

from pathlib import Path
from types import ModuleType

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

from . import swin, vit
from .vit import UnsupportedModelError

__all__ = ["DIGITS", "ModelError", "family_of", "create_model", "load_checkpoint"]

DIGITS = "digits-vit"


class ModelError(ValueError):
    """A model that cannot be built or loaded, with what is expected."""


def family_of(model: nn.Module) -> ModuleType:
    """calib.vit or calib.swin: the module with the model's forward, export and integer forward."""
    from timm.models.swin_transformer import SwinTransformer

    family = swin if isinstance(model, SwinTransformer) else vit
    family.check_supported(model)
    return family


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a .pth/.pt/.bin (torch) or .safetensors state dict with strict key matching."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for unreadable files
        raise ModelError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
    for key in ("model", "state_dict", "model_ema"):  # DeiT / Swin release wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint {path} does not hold a state dict of tensors")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise ModelError(f"checkpoint {path} does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def create_model(name: str, checkpoint: str | Path | None = None, progress: bool = True) -> nn.Module:
    """The float model in eval mode. Raises ModelError for an unknown or unsupported model."""
    if name == DIGITS:
        from .digits import train_digits_vit

        model = train_digits_vit(progress=progress)
    else:
        if not timm.is_model(name):
            raise ModelError(f"unknown model {name!r}; expected {DIGITS!r} or a timm ViT/DeiT/Swin name such as "
                             "deit_tiny_patch16_224 or swin_tiny_patch4_window7_224")
        model = timm.create_model(name, pretrained=False)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    model.eval()
    try:
        family_of(model)
    except UnsupportedModelError as e:
        raise ModelError(f"model {name!r} is not supported: {e}") from None
    return model
