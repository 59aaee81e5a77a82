"""``python -m calib``: FQ-ViT post-training quantization of a model, with an integer-only check.

Calibrates (observers on the float network), exports the integer model, loads the file back and
evaluates float, fake-quant and integer-only top-1 on the test images. Example:

    python -m calib --model digits-vit --observer minmax --ptf --lis --json out.json
    python -m calib --model deit_tiny_patch16_224 --checkpoint deit_tiny.pth --data /imagenet --ptf --lis
"""

# Only torch-free modules at the top: --help and usage errors answer without loading torch.
import argparse
import json
import sys

from fqvit import cache
from fqvit.cli import arg_type, guarded, number, writable_file
from fqvit.contract import DEFAULT_LIS_RULE, LIS_RULES

from .catalog import DIGITS
from .config import OBSERVER_NAMES

OFFICIAL_LIS_RULE = "fqvit"  # the official code's log_round, the default with --official


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m calib", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    count = number(int, 1)
    p.add_argument("--model", default=DIGITS, help=f"{DIGITS} (default, embedded) or a timm ViT/DeiT/Swin name")
    p.add_argument("--checkpoint", help="state dict to load (strict key matching); timm models are random otherwise")
    p.add_argument("--data", help="ImageFolder root with train/ (calibration) and val/ (evaluation)")
    p.add_argument("--synthetic", action="store_true", help="timm models without --data: seeded random images")
    p.add_argument("--observer", default="minmax", choices=OBSERVER_NAMES, help="activation observer")
    p.add_argument("--ptf", action="store_true", help="Power-of-Two Factor for LayerNorm inputs")
    p.add_argument("--lis", action="store_true", help="4-bit Log-Int-Softmax attention (8/8/4)")
    p.add_argument("--lis-rule", default=None, choices=sorted(LIS_RULES),
                   help=f"LIS rounding threshold (default {DEFAULT_LIS_RULE}; {OFFICIAL_LIS_RULE} with --official)")
    p.add_argument("--official", action="store_true", help="fake-quant exactly like the official FQ-ViT code")
    p.add_argument("--calib-images", type=count, default=None, help="calibration images (ImageFolder: 1000)")
    p.add_argument("--calib-batch", type=count, default=None, help="calibration batch size (digits 25, ImageFolder 100)")
    p.add_argument("--images", type=count, default=None, help="evaluate on the first N test images (default: all)")
    p.add_argument("--batch-size", type=count, default=100, help="evaluation batch size")
    p.add_argument("--export", type=arg_type(writable_file),
                   help="integer model file (default: the cache's exports/<model>-<settings>.fqvit.safetensors)")
    p.add_argument("--json", type=arg_type(writable_file), help="write the results as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    cache.add_argument(p)
    return p


def run(args) -> dict:
    """Quantize and evaluate the model `args` names; print the table; return the results."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from .config import QuantConfig
    from .pipeline import quantize

    torch.set_grad_enabled(False)
    rule = args.lis_rule or (OFFICIAL_LIS_RULE if args.official else DEFAULT_LIS_RULE)
    cfg = QuantConfig(args.observer, args.ptf, args.lis, rule, args.official)
    q = quantize(args.model, cfg, checkpoint=args.checkpoint, data_dir=args.data, synthetic=args.synthetic,
                 calib_images=args.calib_images, calib_batch=args.calib_batch, images=args.images,
                 batch_size=args.batch_size, export=args.export, progress=not args.quiet)
    ev = q.evaluation
    top1 = ev.top1()
    result = {
        "model": args.model, "observer": cfg.observer, "ptf": cfg.ptf, "lis": cfg.lis, "lis_rule": cfg.lis_rule,
        "official": cfg.official, "bits": cfg.bits, "images": ev.images, "data": q.data,
        "top1": top1,
        "agreement": {"integer_vs_fakequant": 100.0 * ev.agree_int_fq / max(ev.images, 1),
                      "fakequant_vs_float": 100.0 * ev.agree_fq_float / max(ev.images, 1)},
        "export": str(q.path),
        "seconds": {"calibrate": q.calibrate_s, **{f"eval_{k}": v for k, v in ev.seconds.items()}},
    }
    table = Table(title=f"{args.model}  {cfg.observer}{' + PTF' if cfg.ptf else ''}{' + LIS' if cfg.lis else ''}"
                        f"  W/A/Attn {cfg.bits}{'  (official FQ-ViT fake-quant)' if cfg.official else ''}")
    table.add_column("model")
    table.add_column("top-1 %", justify="right")
    table.add_column("vs float", justify="right")
    for kind, label in (("float", "float32"), ("fakequant", "fake-quant"), ("integer", "integer-only")):
        table.add_row(label, f"{top1[kind]:.2f}", "" if kind == "float" else f"{top1[kind] - top1['float']:+.2f}")
    console = Console()
    console.print(table)
    console.print(f"{q.data}; integer vs fake-quant prediction agreement "
                  f"{result['agreement']['integer_vs_fakequant']:.2f} %; integer model: {q.path}")
    return result


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cache.apply(args)

    def work() -> int:
        from rich.console import Console

        from .data import DataError
        from .export import ExportError
        from .models import ModelError

        try:
            result = run(args)
        except (ModelError, DataError, ExportError, ValueError) as err:
            Console().print(f"[red]error:[/red] {err}")
            return 2
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0

    return guarded(work)


if __name__ == "__main__":
    sys.exit(main())
