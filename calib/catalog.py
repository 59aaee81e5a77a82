"""The models calib knows, decided from their names alone: torch-free, so that a CLI can refuse a
run before it builds or calibrates anything. calib/models.py builds the models themselves."""

__all__ = ["DIGITS", "family_name", "official_input_quant"]

DIGITS = "digits-vit"  # the embedded default (calib/digits.py)


def family_name(model: str) -> str:
    """"swin" for timm's Swin names, else "vit" (ViT, DeiT and the digits model);
    calib.models.family_of decides from the built model."""
    return "swin" if model.startswith("swin") else "vit"


def official_input_quant(model: str) -> bool:
    """Whether the official FQ-ViT code quantizes the model's input image: it does for DeiT and
    Swin, not for its ViT-B/L (timm's ``vit_*`` names). Only the official fake-quant mode follows it."""
    return not model.startswith("vit_")
