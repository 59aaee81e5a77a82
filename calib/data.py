"""Images for calibration and evaluation: the digits splits, an ImageFolder, or synthetic noise.

ImageNet-style data follows FQ-ViT's protocol: calibrate on ``--calib-images`` (1000) images drawn
(seeded shuffle) from ``DIR/train`` and evaluate on ``DIR/val``, both with timm's *eval* transform
for the model (resize by crop_pct, bicubic, center crop, normalize).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

__all__ = ["DataError", "Data", "input_size", "digits_data", "imagefolder_data", "synthetic_data"]


class DataError(ValueError):
    """Unusable data, with what is expected."""


def input_size(model: torch.nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) the model's patch embedding takes."""
    pe = model.patch_embed
    return (pe.proj.in_channels, *pe.img_size)


def _data_config(model: torch.nn.Module) -> dict:
    # The model's own size, with its pretrained config's crop_pct / interpolation / mean / std.
    return resolve_data_config({"input_size": input_size(model)}, model=model)


@dataclass
class Data:
    """Calibration batches and evaluation batches of (normalized images, labels)."""

    calib: DataLoader
    test: DataLoader
    description: str


def digits_data(calib_batch: int = 25, batch_size: int = 100, images: int | None = None) -> Data:
    from .digits import digits_splits

    splits = digits_splits()
    test = splits["test"]
    n = len(test.labels) if images is None else min(images, len(test.labels))
    return Data(
        DataLoader(TensorDataset(splits["calib"].images, splits["calib"].labels), batch_size=calib_batch),
        DataLoader(TensorDataset(test.images[:n], test.labels[:n]), batch_size=batch_size),
        f"sklearn digits: {len(splits['calib'].labels)} calibration (train split), {n} test images",
    )


def _load_image(path: str):
    """torchvision's image loader, with an unreadable file reported as a DataError naming it. The
    DataLoader opens images lazily, so this is where a corrupt file is met, mid-run."""
    try:
        return default_loader(path)
    except Exception as e:  # PIL raises many types for a broken file (OSError, SyntaxError, ValueError, ...)
        raise DataError(f"--data: cannot read the image {path} ({type(e).__name__}: {e}); expected every file "
                        "in the class folders to be an image PIL can open (JPEG, PNG, ...)") from None


def imagefolder_data(root: str | Path, model: torch.nn.Module, calib_images: int = 1000, calib_batch: int = 100,
                     batch_size: int = 100, images: int | None = None, seed: int = 0) -> Data:
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"--data {root}: expected an ImageFolder with {split}/ (class folders of images) inside")
    transform = create_transform(**_data_config(model))
    try:
        train, val = (ImageFolder(root / split, transform, loader=_load_image) for split in ("train", "val"))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"--data {root}: {e}") from None
    classes = getattr(model, "num_classes", None)
    if classes is not None and len(val.classes) > classes:
        raise DataError(f"--data {root}: {len(val.classes)} classes but the model has {classes} outputs")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(train), generator=g)[:calib_images].tolist()
    n = len(val) if images is None else min(images, len(val))
    return Data(
        DataLoader(Subset(train, pick), batch_size=calib_batch),
        DataLoader(Subset(val, range(n)), batch_size=batch_size),
        f"ImageFolder {root}: {len(pick)} calibration images from train/, {n} from val/",
    )


def synthetic_data(model: torch.nn.Module, calib_images: int = 8, images: int = 4, batch_size: int = 4,
                   seed: int = 0) -> Data:
    """Seeded Gaussian images of the model's input size with random labels: exercises every code
    path of a real architecture (accuracy is meaningless, agreement is not)."""
    size = input_size(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((calib_images + images, *size), generator=g)
    y = torch.randint(0, model.num_classes, (calib_images + images,), generator=g)
    return Data(
        DataLoader(TensorDataset(x[:calib_images], y[:calib_images]), batch_size=batch_size),
        DataLoader(TensorDataset(x[calib_images:], y[calib_images:]), batch_size=batch_size),
        f"synthetic: {calib_images} calibration and {images} test images of {size}",
    )
