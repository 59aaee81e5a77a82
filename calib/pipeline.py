"""Calibrate, export, and evaluate float / fake-quant / integer-only side by side."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import export as export_mod
from .config import QuantConfig
from .data import Data
from .models import family_of
from .qsim import QuantSim

__all__ = ["calibrate", "quantize_model", "Evaluation", "evaluate", "integer_forward"]


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


def evaluate(model: torch.nn.Module, sim: QuantSim, im: export_mod.IntModel, data: Data,
             progress: bool = True) -> Evaluation:
    """Top-1 of the float, fake-quant and integer-only models on the test images."""
    family = family_of(model)
    ev = Evaluation()
    with torch.no_grad():
        for x, y in tqdm(data.test, desc="evaluate", unit="batch", disable=not progress):
            preds = {}
            for kind in ("float", "fakequant", "integer"):
                t0 = time.perf_counter()
                if kind == "integer":
                    logits = integer_forward(im, im.quantize_input(x))
                else:
                    sim.set_mode("float" if kind == "float" else "quant")
                    logits = family.forward(model, x, sim)
                ev.seconds[kind] += time.perf_counter() - t0
                preds[kind] = logits.argmax(dim=-1)
                ev.correct[kind] += int((preds[kind] == y).sum())
            ev.agree_int_fq += int((preds["integer"] == preds["fakequant"]).sum())
            ev.agree_fq_float += int((preds["fakequant"] == preds["float"]).sum())
            ev.images += len(y)
    sim.set_mode("quant")
    return ev
