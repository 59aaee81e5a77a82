"""Run a quantized ViT through the accelerator: ``python sw/run_vit.py --backend sim``.

Calibrates the model (FQ-ViT: MinMax + PTF + LIS by default), exports the integer model, then
runs the first test images on a backend: ``ref`` (the integer reference) or ``sim`` (the
Verilated accelerator top, built once and cached). Every intermediate tensor of the backend is
compared with the integer reference, bit for bit. The report gives top-1 of float / fake-quant /
integer reference / backend, the mismatch count, cycles per op kind, MAC utilization and images/s
at the stated clock; ``--json`` writes it to a file. Swin models run on the ``ref`` backend only.

    python sw/run_vit.py --backend sim                          # embedded digits model, 8x8 array
    python sw/run_vit.py --backend sim --array 4x6 --images 4
    python sw/run_vit.py --backend sim --model deit_tiny_patch16_224 --synthetic --images 1 --layers 1
    python sw/run_vit.py --model deit_tiny_patch16_224 --checkpoint deit_tiny.pth --data /imagenet
    python sw/run_vit.py --backend ref --model swin_tiny_patch4_window7_224 --synthetic --images 1
"""

# Only torch-free modules at the top: --help and usage errors answer without loading torch.
import argparse
import json
import sys
import time

from calib.catalog import DIGITS, family_name
from calib.config import OBSERVER_NAMES
from fqvit import cache
from fqvit.cli import arg_type, guarded, number, writable_file
from fqvit.contract import DEFAULT_LIS_RULE, LIS_RULES
from sim.toolchain import PRIMITIVE_MODELS  # the generation targets (rtl_gen.TARGETS), torch- and Amaranth-free

OP_LABELS = {"linear": "linear (matmul + requant/GELU)", "attention": "attention (Q.K^T, LIS softmax, x V on chip)",
             "layernorm": "LayerNorm", "add": "residual add"}


def array_size(text: str) -> tuple[int, int]:
    from hw.systolic import parse_array  # Amaranth, loaded only when --array is given

    return parse_array(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python sw/run_vit.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    count = number(int, 1)
    p.add_argument("--backend", choices=("ref", "sim"), default="sim", help="where the integer model runs (default sim)")
    p.add_argument("--model", default=DIGITS, help=f"{DIGITS} (default, embedded) or a timm ViT/DeiT name "
                   "(Swin: --backend ref only)")
    p.add_argument("--checkpoint", help="state dict to load (strict key matching); timm models are random otherwise")
    p.add_argument("--data", help="ImageFolder root with train/ (calibration) and val/ (evaluation)")
    p.add_argument("--synthetic", action="store_true", help="timm models without --data: seeded random images")
    p.add_argument("--images", type=count, default=8, help="test images to run (default 8)")
    p.add_argument("--array", type=arg_type(array_size), default=(8, 8), help="systolic array RxC (default 8x8)")
    p.add_argument("--act-kib", type=count, default=32, help="activation buffer KiB (default 32: K up to 4096 at 8 rows, ViT-L's fc2)")
    p.add_argument("--weight-kib", type=count, default=64, help="weight buffer KiB (default 64)")
    p.add_argument("--target", choices=tuple(PRIMITIVE_MODELS), default="generic",
                   help="the top's Verilog for the sim backend: generic RTL (default) or ecp5, what synthesis reads "
                        "(DSP and block-RAM primitives simulated by their models in sim/models)")
    p.add_argument("--layers", type=count, default=None, help="run only the first K transformer blocks (ViT/DeiT)")
    p.add_argument("--host-jitter", action="store_true",
                   help="sim backend: the host offers data and takes results at random (a test of the "
                        "accelerator's handshakes; cycles then include the waits)")
    p.add_argument("--mode", default="check", choices=("check", "perf"),
                   help="check (default): read back every intermediate tensor, also those the accelerator "
                        "keeps on chip, and compare each with the reference; perf: compare the final output only")
    p.add_argument("--observer", default="minmax", choices=OBSERVER_NAMES, help="activation observer")
    p.add_argument("--lis-rule", default=DEFAULT_LIS_RULE, choices=sorted(LIS_RULES),
                   help=f"LIS rounding rule (default {DEFAULT_LIS_RULE})")
    p.add_argument("--clock-mhz", type=number(float, 0, low_open=True), default=100.0,
                   help="clock for images/s (default 100 MHz)")
    p.add_argument("--json", type=arg_type(writable_file), help="write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    cache.add_argument(p)
    return p


def refusal(args) -> str | None:
    """Why the run cannot go ahead, decided from the arguments alone (before calibrating); None if it can."""
    if args.target != "generic" and args.backend != "sim":
        return f"--target {args.target} chooses the Verilog the sim backend builds; --backend {args.backend} runs none"
    if family_name(args.model) == "swin":
        if args.backend == "sim":
            return (f"{args.model} is a Swin model: the accelerator does not run Swin's shifted-window attention "
                    "yet; --backend ref runs its integer reference")
        if args.layers is not None:
            return f"--layers takes the first blocks of a ViT/DeiT; {args.model} (Swin) runs whole"
    return None


def run(args, console) -> dict:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from calib.config import QuantConfig
    from calib.pipeline import integer_forward, quantize
    from sw import driver
    from sw.compiler import CompileError

    torch.set_grad_enabled(False)
    t_start = time.perf_counter()
    progress = not args.quiet
    # PTF and LIS (the accelerator's softmax) always on; all test images in one batch
    q = quantize(args.model, QuantConfig(args.observer, ptf=True, lis=True, lis_rule=args.lis_rule),
                 checkpoint=args.checkpoint, data_dir=args.data, synthetic=args.synthetic, images=args.images,
                 batch_size=args.images, progress=progress)
    im, codes, labels = q.im, q.codes, q.labels

    rows, cols = args.array
    if im.arch == "vit":
        depth = im.config["depth"]
        layers = depth if args.layers is None else args.layers
        if layers > depth:
            raise CompileError(f"--layers must be in 1..{depth} ({args.model} has {depth} blocks), got {layers}")
        cfg = driver.top_config(im, rows, cols, act_kib=args.act_kib, weight_kib=args.weight_kib)
        with console.status("Compiling every op for the accelerator and running the integer reference"):
            reference, n_ops = driver.plan(im, codes, cfg, layers)
    else:  # Swin: the integer reference only (refusal() turned away --backend sim and --layers)
        depth = layers = sum(im.config["depths"])
        cfg = None
        with console.status("Running the integer reference"):
            trace = {}
            reference = driver.Run(integer_forward(im, codes, trace), trace)

    if args.backend == "ref":
        got = driver.run_ref(im, codes, args.layers)
    else:
        with console.status(f"Generating the {rows}x{cols} top ({args.target}) and building it with Verilator (cached after the first run)"):
            compiled = driver.build_sim(cfg, args.target)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not progress) as bar:
            task = bar.add_task(f"{len(labels)} images through the Verilated top (ops)", total=n_ops)
            got = driver.run_sim(compiled, cfg, q.path, codes, layers, lambda n: bar.update(task, completed=n),
                                 check=args.mode == "check", jitter=args.host_jitter)

    perf = args.mode == "perf" and args.backend == "sim"
    tensors = driver.compare(*((driver.final_output(r.trace) for r in (reference, got)) if perf
                               else (reference.trace, got.trace)))
    mismatches = sum(t["mismatches"] for t in tensors.values())
    full = layers == depth
    predictions = got.out.argmax(-1) if full else None  # a partial run ends in the residual stream, not logits
    top1 = {**q.evaluation.top1(),
            "backend": 100.0 * float((predictions == labels).float().mean()) if full else None}
    images = len(labels)
    report = {
        "model": args.model, "backend": args.backend, "images": images, "export": str(q.path),
        "mode": "perf" if perf else "check", "array": f"{rows}x{cols}" if cfg else None, "target": args.target if args.backend == "sim" else None, "layers": layers, "depth": depth,
        "top": cfg.to_dict() if cfg else None, "top1": top1,
        "bit_exact": mismatches == 0, "mismatches": mismatches,
        "tensors_compared": len(tensors), "elements_compared": sum(t["elements"] for t in tensors.values()),
        "predictions": predictions.tolist() if full else None,  # the backend's class per test image
        "clock_mhz": args.clock_mhz, "wall_s": None,
    }
    if got.cycles is not None:
        model_ops = {k: s for k, s in sorted(got.stats.items()) if k != "check"}
        macs = sum(s["macs"] for s in model_ops.values())
        per_image = got.cycles / images
        report.update({
            "cycles": {"total": got.cycles, "per_image": per_image,
                       "by_op": {k: s["cycles"] for k, s in model_ops.items()},
                       # check mode's read-backs of the attention chain's intermediates, not in the total
                       "check": got.check_cycles},
            "host_link_bytes": driver.host_link_bytes(got.traffic, full),
            "host_link_bytes_check": sum(got.check_traffic.values()),
            "macs": macs,
            "mac_utilization": macs / (got.cycles * rows * cols),
            # the op's model MACs over its cycles x R x C: attention's include attention x V, which
            # runs beside the array, so it may exceed 100 %
            "mac_utilization_by_op": {k: s["macs"] / max(s["cycles"] * rows * cols, 1)
                                      for k, s in model_ops.items() if s["macs"]},
            "images_per_s": args.clock_mhz * 1e6 / per_image,
            "sim_cycles_per_s": got.cycles / got.sim_seconds if got.sim_seconds else None,
        })
    else:  # the reference has no clock
        report.update({"cycles": None, "macs": None, "mac_utilization": None, "images_per_s": None,
                       "host_link_bytes": None})
    report["wall_s"] = time.perf_counter() - t_start
    print_report(console, report, tensors, got)
    return report


def print_report(console, r: dict, tensors: dict, got) -> None:
    from rich.table import Table

    scope = "" if r["layers"] == r["depth"] else f", first {r['layers']} of {r['depth']} blocks"
    where = f"on the {r['array']} accelerator" if r["array"] else "(no accelerator configuration: Swin)"
    table = Table(title=f"{r['model']} {where}, backend {r['backend']}{scope}, {r['images']} images")
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
        link = r["host_link_bytes"]
        table.add_row("host link bytes (program / input / weights / activations / output)",
                      " / ".join(f"{link[k]:,}" for k in ("program", "input", "weights", "activations", "output")))
        if r["cycles"].get("check"):
            table.add_row("check-mode read-back cycles (not in the total)", f"{r['cycles']['check']:,}")
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
        for col in ("op", "calls", "cycles", "share", "MACs / (cycles x R x C)"):
            ops.add_column(col, justify="left" if col == "op" else "right")
        total = r["cycles"]["total"]
        for kind, cycles in sorted(r["cycles"]["by_op"].items(), key=lambda kv: -kv[1]):
            util = r["mac_utilization_by_op"].get(kind)
            ops.add_row(OP_LABELS.get(kind, kind), str(got.stats[kind]["calls"]), f"{cycles:,}",
                        f"{100 * cycles / total:.1f} %", "" if util is None else f"{100 * util:.1f} %")
        console.print(ops)
    bad = {name: t for name, t in tensors.items() if t["mismatches"]}
    for name, t in list(bad.items())[:20]:
        console.print(f"[red]mismatch[/red] {name}: {t['mismatches']} of {t['elements']} elements")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cache.apply(args)

    def work() -> int:
        from rich.console import Console

        console = Console()
        reason = refusal(args)
        if reason:
            console.print(f"[red]error:[/red] {reason}")
            return 2

        from calib.data import DataError
        from calib.export import ExportError
        from calib.models import ModelError
        from sim.toolchain import ToolchainError
        from sw.compiler import CompileError

        try:
            report = run(args, console)
        except (ModelError, DataError, ExportError, CompileError, ToolchainError, ValueError, RuntimeError) as err:
            console.print(f"[red]error:[/red] {err}")
            return 2
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0 if report["bit_exact"] else 1

    return guarded(work)


if __name__ == "__main__":
    sys.exit(main())
