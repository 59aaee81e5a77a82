"""Fixtures shared by several test modules."""

import pytest
import torch
from PIL import Image


def pytest_configure(config):
    # pyproject's `timeout` needs pytest-timeout; without it pytest stops on an unknown ini key
    # with an INTERNALERROR that does not say what is missing.
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError('pytest-timeout is not installed: install the test extras, pip install -e ".[test]"')


def _make_imagefolder(root, size=40, per_class=3):
    """A tiny ImageFolder (train/ and val/, two classes) of random images that are not the model's size."""
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size + 8, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(d / f"{i}.png")
    return root


@pytest.fixture
def make_imagefolder():
    return _make_imagefolder
