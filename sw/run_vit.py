"""Run a quantized ViT through the accelerator: ``python sw/run_vit.py --backend sim``.

Calibrates the model (FQ-ViT: MinMax + PTF + LIS by default), exports the integer model, then
runs the first test images on a backend: ``ref`` (the integer reference) or ``sim`` (the
Verilated accelerator top, built once and cached). Every intermediate tensor of the backend is
compared with the integer reference, bit for bit. The report gives top-1 of float / fake-quant /
integer reference / backend, the mismatch count, cycles per op kind, MAC utilization and images/s
at the stated clock; ``--json`` writes it to a file.

    python sw/run_vit.py --backend sim                          # embedded digits model, 8x8 array
    python sw/run_vit.py --backend sim --array 4x6 --images 4
    python sw/run_vit.py --backend sim --model deit_tiny_patch16_224 --synthetic --images 1 --layers 1
    python sw/run_vit.py --model deit_tiny_patch16_224 --checkpoint deit_tiny.pth --data /imagenet
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from calib.__main__ import prepare
from calib.data import DataError
from calib.export import ExportError, IntModel
from calib.intref.softmax import LIS_RULES
from calib.models import DIGITS, ModelError
from calib.observers import OBSERVERS
from calib.pipeline import Evaluation, calibrate, evaluate, quantize_model
from hw.systolic import SystolicConfig
from sim.toolchain import ToolchainError
from sw import driver
from sw.compiler import CompileError

OP_LABELS = {"linear": "linear (matmul + requant/GELU)", "logits": "attention logits Q.K^T", "softmax": "LIS softmax",
             "attn_v": "attention x V", "layernorm": "LayerNorm", "add": "residual add"}


def array_dims(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--array must be RxC (two integers), got {text!r}") from None
    for name, value in (("rows", rows), ("cols", cols)):
        if not 1 <= value <= SystolicConfig.MAX_DIM:
            raise argparse.ArgumentTypeError(f"--array {name} must be in 1..{SystolicConfig.MAX_DIM}, got {value}")
    return rows, cols


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python sw/run_vit.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--backend", choices=("ref", "sim"), default="sim", help="where the integer model runs (default sim)")
    p.add_argument("--model", default=DIGITS, help=f"{DIGITS} (default, embedded) or a timm ViT/DeiT name")
    p.add_argument("--checkpoint", help="state dict to load (strict key matching); timm models are random otherwise")
    p.add_argument("--data", help="ImageFolder root with train/ (calibration) and val/ (evaluation)")
    p.add_argument("--synthetic", action="store_true", help="timm models without --data: seeded random images")
    p.add_argument("--images", type=int, default=8, help="test images to run (default 8)")
    p.add_argument("--array", type=array_dims, default=(8, 8), help="systolic array RxC (default 8x8)")
    p.add_argument("--act-kib", type=int, default=8, help="activation buffer KiB (default 8)")
    p.add_argument("--weight-kib", type=int, default=64, help="weight buffer KiB (default 64)")
    p.add_argument("--layers", type=int, default=None, help="run only the first K transformer blocks")
    p.add_argument("--observer", default="minmax", choices=sorted(OBSERVERS), help="activation observer")
    p.add_argument("--lis-rule", default="nearest", choices=sorted(LIS_RULES), help="LIS rounding rule")
    p.add_argument("--clock-mhz", type=float, default=100.0, help="clock for images/s (default 100 MHz)")
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def calib_args(args) -> argparse.Namespace:
    """The calib CLI's arguments for this run: PTF and LIS (the accelerator's softmax) always on."""
    return argparse.Namespace(model=args.model, checkpoint=args.checkpoint, data=args.data, synthetic=args.synthetic,
                              observer=args.observer, ptf=True, lis=True, lis_rule=args.lis_rule, official=False,
                              calib_images=None, calib_batch=None, images=args.images, batch_size=args.images,
                              export=None)


@dataclass
class Quantized:
    im: IntModel
    path: Path  # the exported integer model
    evaluation: Evaluation  # float / fake-quant / integer top-1 on the test images
    codes: torch.Tensor  # the test images' uint8 codes
    labels: torch.Tensor
    calibrate_s: float


def quantize(args, progress: bool) -> Quantized:
    """Calibrate (PTF + LIS), export and evaluate the model the arguments name."""
    model, data, qcfg, path = prepare(calib_args(args), progress)
    t0 = time.perf_counter()
    sim = calibrate(model, qcfg, data, progress, official_input_quant=not args.model.startswith("vit_"))
    calibrate_s = time.perf_counter() - t0
    im = quantize_model(model, sim, args.model, path)
    ev = evaluate(model, sim, im, data, progress)
    xs, ys = zip(*data.test)
    return Quantized(im, path, ev, im.quantize_input(torch.cat(xs)), torch.cat(ys), calibrate_s)


def run(args, console: Console) -> dict:
    t_start = time.perf_counter()
    progress = not args.quiet
    q = quantize(args, progress)
    im, path, ev, codes, labels = q.im, q.path, q.evaluation, q.codes, q.labels

    depth = im.config["depth"]
    layers = depth if args.layers is None else args.layers
    if not 1 <= layers <= depth:
        raise CompileError(f"--layers must be in 1..{depth} ({args.model} has {depth} blocks), got {layers}")
    rows, cols = args.array
    cfg = driver.top_config(im, rows, cols, act_kib=args.act_kib, weight_kib=args.weight_kib)
    with console.status("Compiling every op for the accelerator and running the integer reference"):
        reference, n_ops = driver.plan(im, codes, cfg, layers)

    if args.backend == "ref":
        got = driver.run_ref(im, codes, layers)
    else:
        with console.status(f"Generating the {rows}x{cols} top and building it with Verilator (cached after the first run)"):
            compiled = driver.build_sim(cfg)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not progress) as bar:
            task = bar.add_task(f"{len(labels)} images through the Verilated top (ops)", total=n_ops)
            got = driver.run_sim(compiled, cfg, path, codes, layers, lambda n: bar.update(task, completed=n))

    tensors = driver.compare(reference.trace, got.trace)
    mismatches = sum(t["mismatches"] for t in tensors.values())
    full = layers == depth
    top1 = {**ev.top1(), "backend": 100.0 * float((got.out.argmax(-1) == labels).float().mean()) if full else None}
    images = len(labels)
    report = {
        "model": args.model, "backend": args.backend, "images": images, "array": f"{rows}x{cols}",
        "layers": layers, "depth": depth, "top": cfg.to_dict(), "top1": top1,
        "bit_exact": mismatches == 0, "mismatches": mismatches,
        "tensors_compared": len(tensors), "elements_compared": sum(t["elements"] for t in tensors.values()),
        "clock_mhz": args.clock_mhz, "wall_s": None,
    }
    if got.cycles is not None:
        macs = sum(s["macs"] for s in got.stats.values())
        per_image = got.cycles / images
        report.update({
            "cycles": {"total": got.cycles, "per_image": per_image,
                       "by_op": {k: s["cycles"] for k, s in sorted(got.stats.items())}},
            "mac_utilization": macs / (got.cycles * rows * cols),
            "matmul_utilization": {k: s["macs"] / max(s["cycles"] * rows * cols, 1)
                                   for k, s in sorted(got.stats.items()) if s["macs"]},
            "images_per_s": args.clock_mhz * 1e6 / per_image,
            "sim_cycles_per_s": got.cycles / got.sim_seconds if got.sim_seconds else None,
        })
    else:  # the reference has no clock
        report.update({"cycles": None, "mac_utilization": None, "images_per_s": None})
    report["wall_s"] = time.perf_counter() - t_start
    print_report(console, report, tensors, got)
    return report


def print_report(console: Console, r: dict, tensors: dict, got) -> None:
    scope = "" if r["layers"] == r["depth"] else f", first {r['layers']} of {r['depth']} blocks"
    table = Table(title=f"{r['model']} on the {r['array']} accelerator, backend {r['backend']}{scope}, {r['images']} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for kind in ("float", "fakequant", "integer", "backend"):
        value = r["top1"][kind]
        table.add_row(f"top-1 {kind}", "n/a (partial model)" if value is None else f"{value:.1f} %")
    table.add_row("bit-exact vs integer reference", str(r["bit_exact"]).lower())
    table.add_row("mismatching elements", f"{r['mismatches']:,} of {r['elements_compared']:,} "
                                          f"in {r['tensors_compared']} tensors")
    if r["cycles"]:
        table.add_row("cycles (total)", f"{r['cycles']['total']:,}")
        table.add_row("cycles per image", f"{r['cycles']['per_image']:,.0f}")
        table.add_row("MAC utilization (whole run)", f"{100 * r['mac_utilization']:.1f} %")
        table.add_row(f"images/s at {r['clock_mhz']:g} MHz", f"{r['images_per_s']:,.1f}")
        if r.get("sim_cycles_per_s"):
            table.add_row("simulation speed", f"{r['sim_cycles_per_s']:,.0f} cycles/s")
    else:
        table.add_row("cycles", "n/a (the ref backend has no clock)")
    table.add_row("wall time", f"{r['wall_s']:.1f} s")
    console.print(table)
    if r["cycles"]:
        ops = Table(title="cycles by op kind")
        for col in ("op", "calls", "cycles", "share", "array utilization"):
            ops.add_column(col, justify="left" if col == "op" else "right")
        total = r["cycles"]["total"]
        for kind, cycles in sorted(r["cycles"]["by_op"].items(), key=lambda kv: -kv[1]):
            util = r["matmul_utilization"].get(kind)
            ops.add_row(OP_LABELS.get(kind, kind), str(got.stats[kind]["calls"]), f"{cycles:,}",
                        f"{100 * cycles / total:.1f} %", "" if util is None else f"{100 * util:.1f} %")
        console.print(ops)
    bad = {name: t for name, t in tensors.items() if t["mismatches"]}
    for name, t in list(bad.items())[:20]:
        console.print(f"[red]mismatch[/red] {name}: {t['mismatches']} of {t['elements']} elements")


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    for name in ("images", "act_kib", "weight_kib", "layers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    console = Console()
    torch.set_grad_enabled(False)
    try:
        report = run(args, console)
    except (ModelError, DataError, ExportError, CompileError, ToolchainError, ValueError, RuntimeError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["bit_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
