"""Calibrate, export, and evaluate float / fake-quant / integer-only side by side.

``quantize(...)`` is the whole run in one call, the library under ``python -m calib``,
``sw/run_vit.py`` and ``sw/bench.py``; the steps are public for callers that bring their own model
or data (``calibrate``, ``quantize_model``, ``evaluate``).
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from fqvit import cache

from . import catalog
from . import export as export_mod
from .catalog import DIGITS
from .config import QuantConfig
from .data import Data, DataError, digits_data, imagefolder_data, synthetic_data
from .models import create_model, family_of
from .qsim import QuantSim

__all__ = ["calibrate", "quantize_model", "Evaluation", "KINDS", "predict", "evaluate", "integer_forward", "load_data",
           "default_export_path", "Quantized", "quantize"]


def integer_forward(im: export_mod.IntModel, codes: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
    """Run an integer model on uint8 image codes (dispatch on its architecture)."""
    from .intref import swin as iswin
    from .intref import vit as ivit

    forwards = {"vit": ivit.forward, "swin": iswin.forward}
    if im.arch not in forwards:
        raise export_mod.ExportError(f"integer model architecture {im.arch!r} is not one of {sorted(forwards)}")
    return forwards[im.arch](im, codes, trace)


def calibrate(model: torch.nn.Module, cfg: QuantConfig, data: Data, progress: bool = True,
              official_input_quant: bool = True) -> QuantSim:
    """FQ-ViT calibration: observers watch the float network on every calibration batch; OMSE and
    PTF search on the last one. Returns the QuantSim in quant mode."""
    family = family_of(model)
    sim = QuantSim(cfg)
    sim.input_quant = official_input_quant
    sim.set_mode("calibrate")
    batches = len(data.calib)
    if batches == 0:
        raise ValueError("no calibration images")
    with torch.no_grad():
        for i, (x, _) in enumerate(tqdm(data.calib, desc="calibrate", unit="batch", disable=not progress)):
            sim.last = i == batches - 1
            family.forward(model, x, sim)
    sim.finish_calibration()
    sim.set_mode("quant")
    return sim


def quantize_model(model: torch.nn.Module, sim: QuantSim, name: str, path: str | Path) -> export_mod.IntModel:
    """Export the integer model to `path` and load it back (so what we evaluate is the file)."""
    im = family_of(model).export(model, sim, name)
    export_mod.save(im, path)
    return export_mod.load(path)


@dataclass
class Evaluation:
    images: int = 0
    correct: dict = field(default_factory=lambda: {"float": 0, "fakequant": 0, "integer": 0})
    agree_int_fq: int = 0
    agree_fq_float: int = 0
    seconds: dict = field(default_factory=lambda: {"float": 0.0, "fakequant": 0.0, "integer": 0.0})

    def top1(self) -> dict:
        return {k: 100.0 * v / max(self.images, 1) for k, v in self.correct.items()}


KINDS = ("float", "fakequant", "integer")


def predict(model: torch.nn.Module, sim: QuantSim, im: export_mod.IntModel, x: torch.Tensor,
            kinds=KINDS) -> tuple[dict, dict]:
    """Class predictions of the float, fake-quant and integer-only models (`kinds`) on one batch of
    normalized images, and the seconds each took; `sim` is left in quant mode."""
    family = family_of(model)
    preds, seconds = {}, {}
    with torch.no_grad():
        for kind in kinds:
            t0 = time.perf_counter()
            if kind == "integer":
                logits = integer_forward(im, im.quantize_input(x))
            else:
                sim.set_mode("float" if kind == "float" else "quant")
                logits = family.forward(model, x, sim)
            seconds[kind] = time.perf_counter() - t0
            preds[kind] = logits.argmax(dim=-1)
    sim.set_mode("quant")
    return preds, seconds


def evaluate(model: torch.nn.Module, sim: QuantSim, im: export_mod.IntModel, data: Data,
             progress: bool = True) -> Evaluation:
    """Top-1 of the float, fake-quant and integer-only models on the test images."""
    ev = Evaluation()
    for x, y in tqdm(data.test, desc="evaluate", unit="batch", disable=not progress):
        preds, seconds = predict(model, sim, im, x)
        for kind in KINDS:
            ev.seconds[kind] += seconds[kind]
            ev.correct[kind] += int((preds[kind] == y).sum())
        ev.agree_int_fq += int((preds["integer"] == preds["fakequant"]).sum())
        ev.agree_fq_float += int((preds["fakequant"] == preds["float"]).sum())
        ev.images += len(y)
    return ev


def load_data(model_name: str, model: torch.nn.Module, data_dir: str | Path | None = None, synthetic: bool = False,
              calib_images: int | None = None, calib_batch: int | None = None, images: int | None = None,
              batch_size: int = 100) -> Data:
    """The model's calibration and test images: the digits splits for the digits model, else the
    ImageFolder `data_dir` (FQ-ViT's protocol: 1000 calibration images in batches of 100) or,
    with `synthetic`, seeded random images (8 calibration, 4 test, batches of at most 4). None
    picks those defaults."""
    if model_name == DIGITS:
        if data_dir is not None:
            raise DataError(f"--data is for timm models; {DIGITS} uses its own embedded test split")
        return digits_data(calib_batch or 25, batch_size, images)
    if data_dir is not None:
        return imagefolder_data(data_dir, model, calib_images or 1000, calib_batch or 100, batch_size, images)
    if synthetic:
        return synthetic_data(model, calib_images or 8, images or 4, min(batch_size, 4))
    raise DataError(f"--model {model_name} needs --data DIR (an ImageFolder with train/ and val/) or --synthetic")


def default_export_path(model_name: str, cfg: QuantConfig) -> Path:
    """Where `quantize` writes the integer model unless told: the cache, one file per model and
    settings (each run rewrites it)."""
    settings = [cfg.observer, "ptf" if cfg.ptf else "noptf", cfg.bits.replace("/", "")]
    if cfg.lis:
        settings.append(cfg.lis_rule)
    if cfg.official:
        settings.append("official")
    return cache.part("exports") / f"{model_name.replace('/', '_')}-{'-'.join(settings)}.fqvit.safetensors"


@dataclass(frozen=True)
class Quantized:
    """What `quantize` made: the calibrated model, the integer model (and its file), and its evaluation."""

    model: torch.nn.Module  # the float model
    sim: QuantSim  # its calibration, in quant mode
    im: export_mod.IntModel  # the integer model, as loaded back from `path`
    path: Path
    evaluation: Evaluation  # float / fake-quant / integer top-1 on the test images
    test_set: torch.utils.data.Dataset  # the test images (normalized) and labels, loaded on demand
    data: str  # what the images are
    calibrate_s: float

    def inputs(self, ids) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalized images [n, C, H, W] and labels [n] of the test images `ids`, loaded now
        (an ImageFolder's files are read and transformed only for the images asked for)."""
        xs, ys = zip(*(self.test_set[i] for i in ids))
        return torch.stack(xs), torch.as_tensor(ys)

    def images(self, ids) -> tuple[torch.Tensor, torch.Tensor]:
        """`inputs` as the integer model takes them: uint8 codes, and the labels."""
        x, y = self.inputs(ids)
        return self.im.quantize_input(x), y


def quantize(model_name: str = DIGITS, config: QuantConfig = QuantConfig(), *, checkpoint: str | Path | None = None,
             data_dir: str | Path | None = None, synthetic: bool = False, calib_images: int | None = None,
             calib_batch: int | None = None, images: int | None = None, batch_size: int = 100,
             export: str | Path | None = None, progress: bool = True, evaluation: bool = True) -> Quantized:
    """Build `model_name` (calib.models.create_model), load its data (`load_data`), calibrate it
    with `config`, export the integer model to `export` (default `default_export_path`), load the
    file back and evaluate float, fake-quant and integer-only top-1 on the first `images` test images
    (unless not `evaluation`: sw/shards.py evaluates them image by image, in parallel).

    Raises ModelError, DataError or ExportError (all with what is expected) for unusable inputs."""
    model = create_model(model_name, checkpoint, progress=progress)
    data = load_data(model_name, model, data_dir, synthetic, calib_images, calib_batch, images, batch_size)
    t0 = time.perf_counter()
    sim = calibrate(model, config, data, progress, official_input_quant=catalog.official_input_quant(model_name))
    calibrate_s = time.perf_counter() - t0
    path = Path(export) if export is not None else default_export_path(model_name, config)
    im = quantize_model(model, sim, model_name, path)
    ev = evaluate(model, sim, im, data, progress) if evaluation else Evaluation()
    return Quantized(model, sim, im, path, ev, data.test.dataset, data.description, calibrate_s)
