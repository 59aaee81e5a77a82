"""``python -m calib``: FQ-ViT post-training quantization of a model, with an integer-only check.

Calibrates (observers on the float network), exports the integer model, loads the file back and
evaluates float, fake-quant and integer-only top-1 on the test images. Example:

    python -m calib --model digits-vit --observer minmax --ptf --lis --json out.json
    python -m calib --model deit_tiny_patch16_224 --checkpoint deit_tiny.pth --data /imagenet --ptf --lis
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .config import QuantConfig
from .data import DataError, digits_data, imagefolder_data, synthetic_data
from .export import ExportError
from .intref.softmax import LIS_RULES
from .models import DIGITS, ModelError, create_model
from .observers import OBSERVERS
from .pipeline import calibrate, evaluate, quantize_model


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m calib", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DIGITS, help=f"{DIGITS} (default, embedded) or a timm ViT/DeiT/Swin name")
    p.add_argument("--checkpoint", help="state dict to load (strict key matching); timm models are random otherwise")
    p.add_argument("--data", help="ImageFolder root with train/ (calibration) and val/ (evaluation)")
    p.add_argument("--synthetic", action="store_true", help="timm models without --data: seeded random images")
    p.add_argument("--observer", default="minmax", choices=sorted(OBSERVERS), help="activation observer")
    p.add_argument("--ptf", action="store_true", help="Power-of-Two Factor for LayerNorm inputs")
    p.add_argument("--lis", action="store_true", help="4-bit Log-Int-Softmax attention (8/8/4)")
    p.add_argument("--lis-rule", default=None, choices=sorted(LIS_RULES),
                   help="LIS rounding threshold (default nearest; fqvit with --official)")
    p.add_argument("--official", action="store_true", help="fake-quant exactly like the official FQ-ViT code")
    p.add_argument("--calib-images", type=int, default=None, help="calibration images (ImageFolder: 1000)")
    p.add_argument("--calib-batch", type=int, default=None, help="calibration batch size (digits 25, ImageFolder 100)")
    p.add_argument("--images", type=int, default=None, help="evaluate on the first N test images (default: all)")
    p.add_argument("--batch-size", type=int, default=100, help="evaluation batch size")
    p.add_argument("--export", help="integer model file (default build/export/<model>-<observer>-<bits>.fqvit.safetensors)")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def positive(p, name, value):
    if value is not None and value < 1:
        p.error(f"--{name} must be a positive integer, got {value}")


def prepare(args, progress: bool = True):
    """The model, its data, the quantization config and the export path the arguments name."""
    rule = args.lis_rule or ("fqvit" if args.official else "nearest")
    cfg = QuantConfig(args.observer, args.ptf, args.lis, rule, args.official)
    model = create_model(args.model, args.checkpoint, progress=progress)
    if args.model == DIGITS:
        if args.data:
            raise DataError("--data is for timm models; digits-vit uses its own embedded test split")
        data = digits_data(args.calib_batch or 25, args.batch_size, args.images)
    elif args.data:
        data = imagefolder_data(args.data, model, args.calib_images or 1000, args.calib_batch or 100,
                                args.batch_size, args.images)
    elif args.synthetic:
        data = synthetic_data(model, args.calib_images or 8, args.images or 4, min(args.batch_size, 4))
    else:
        raise DataError(f"--model {args.model} needs --data DIR (an ImageFolder with train/ and val/) or --synthetic")
    name = args.model.replace("/", "_")
    path = Path(args.export or f"build/export/{name}-{cfg.observer}-{'ptf' if cfg.ptf else 'noptf'}-"
                               f"{cfg.bits.replace('/', '')}.fqvit.safetensors")
    return model, data, cfg, path


def run(args, console: Console) -> dict:
    progress = not args.quiet
    model, data, cfg, path = prepare(args, progress)
    t0 = time.perf_counter()
    sim = calibrate(model, cfg, data, progress, official_input_quant=not args.model.startswith("vit_"))
    t_calib = time.perf_counter() - t0
    im = quantize_model(model, sim, args.model, path)
    ev = evaluate(model, sim, im, data, progress)
    top1 = ev.top1()
    result = {
        "model": args.model, "observer": cfg.observer, "ptf": cfg.ptf, "lis": cfg.lis, "lis_rule": cfg.lis_rule,
        "official": cfg.official, "bits": cfg.bits, "images": ev.images, "data": data.description,
        "top1": top1,
        "agreement": {"integer_vs_fakequant": 100.0 * ev.agree_int_fq / max(ev.images, 1),
                      "fakequant_vs_float": 100.0 * ev.agree_fq_float / max(ev.images, 1)},
        "export": str(path),
        "seconds": {"calibrate": t_calib, **{f"eval_{k}": v for k, v in ev.seconds.items()}},
    }
    table = Table(title=f"{args.model}  {cfg.observer}{' + PTF' if cfg.ptf else ''}{' + LIS' if cfg.lis else ''}"
                        f"  W/A/Attn {cfg.bits}{'  (official FQ-ViT fake-quant)' if cfg.official else ''}")
    table.add_column("model")
    table.add_column("top-1 %", justify="right")
    table.add_column("vs float", justify="right")
    for kind, label in (("float", "float32"), ("fakequant", "fake-quant"), ("integer", "integer-only")):
        table.add_row(label, f"{top1[kind]:.2f}", "" if kind == "float" else f"{top1[kind] - top1['float']:+.2f}")
    console.print(table)
    console.print(f"{data.description}; integer vs fake-quant prediction agreement "
                  f"{result['agreement']['integer_vs_fakequant']:.2f} %; integer model: {path}")
    return result


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    for name in ("calib_images", "calib_batch", "images", "batch_size"):
        positive(p, name.replace("_", "-"), getattr(args, name))
    console = Console()
    torch.set_grad_enabled(False)
    try:
        result = run(args, console)
    except (ModelError, DataError, ExportError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
