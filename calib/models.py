"""Which models calib can quantize, and how they are built and loaded (no downloads, ever).

``digits-vit`` is the embedded default (calib/digits.py: trained locally, cached). Any timm name
whose architecture calib/vit.py or calib/swin.py supports is built with random weights, or with
``--checkpoint FILE`` loaded with strict key matching (FQ-ViT loads with strict=False, so a
mismatched checkpoint silently leaves layers random there).
"""

import zipfile
from pathlib import Path
from types import ModuleType

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

from . import swin, vit
from .catalog import DIGITS
from .vit import UnsupportedModelError

__all__ = ["DIGITS", "ModelError", "family_of", "create_model", "load_checkpoint"]


class ModelError(ValueError):
    """A model that cannot be built or loaded, with what is expected."""


def family_of(model: nn.Module) -> ModuleType:
    """calib.vit or calib.swin: the module with the model's forward, export and integer forward."""
    from timm.models.swin_transformer import SwinTransformer

    family = swin if isinstance(model, SwinTransformer) else vit
    family.check_supported(model)
    return family


# What --checkpoint takes, for every message about a file that is not one.
_EXPECTED = ("expected a PyTorch state dict saved with torch.save(model.state_dict(), path), optionally "
                       "wrapped as {'model': state_dict}, or a .safetensors file")


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a .pth/.pt/.bin (torch) or .safetensors state dict with strict key matching."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"checkpoint {path} does not exist; {_EXPECTED}")
    if not path.is_file():
        raise ModelError(f"checkpoint {path} is not a file; {_EXPECTED}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for unreadable files
        # torch's own message advises weights_only=False (running the file's pickled code): say
        # instead what the file is and what it should be.
        if path.suffix == ".safetensors":
            what = f"is not a readable safetensors file ({e})"
        elif zipfile.is_zipfile(path):
            what = "holds Python objects besides tensors (a whole pickled model?)"
        else:
            what = "is not a file written by torch.save"
        raise ModelError(f"checkpoint {path} {what}; {_EXPECTED}") from None
    for key in ("model", "state_dict", "model_ema"):  # DeiT / Swin release wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint {path} does not hold a state dict of tensors; {_EXPECTED}")
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
