"""Run a quantized ViT through the accelerator: ``python sw/run_vit.py --backend sim``.

Calibrates the model (FQ-ViT: MinMax + PTF + LIS by default), exports the integer model, then
runs the first test images on a backend: ``ref`` (the integer reference) or ``sim`` (the
Verilated accelerator top, built once and cached). Every intermediate tensor of the backend is
compared with the integer reference, bit for bit. The report gives top-1 of float / fake-quant /
integer reference / backend, the mismatch count, cycles per op kind, MAC utilization and images/s
at the stated clock; ``--json`` writes it to a file. Swin models run on the ``ref`` backend only.
``--workers W`` runs the images in shards on Ray (sw/shards.py), ``--results DIR`` keeps one
record per image and resumes from them (sw/results_store.py); the report is computed from them.

    python sw/run_vit.py --backend sim                          # embedded digits model, 8x8 array
    python sw/run_vit.py --backend sim --array 4x6 --images 4
    python sw/run_vit.py --backend sim --model deit_tiny_patch16_224 --synthetic --images 1 --layers 1
    python sw/run_vit.py --model deit_tiny_patch16_224 --checkpoint deit_tiny.pth --data /imagenet
    python sw/run_vit.py --backend ref --model swin_tiny_patch4_window7_224 --synthetic --images 1
    python sw/run_vit.py --backend sim --images 500 --workers 2 --results runs/digits
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
from sw.shards import MAX_SHARD_IMAGES

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
    p.add_argument("--workers", type=count, default=1,
                   help="run the images in shards on W Ray workers (default 1: in this process, no Ray); without "
                        "--ray a local Ray instance starts on this machine")
    p.add_argument("--ray", metavar="ADDRESS", help="join this Ray cluster (what `ray start --head` prints) and "
                   "keep --workers shards in flight on it")
    p.add_argument("--results", type=arg_type(results_folder), metavar="DIR",
                   help="store one record per image in DIR/results.sqlite as it completes; the same command "
                        "again skips the images stored there (resume) and reports from the records")
    p.add_argument("--shard-images", type=count, default=None, metavar="S",
                   help=f"images per shard (one batch on one worker; default: split over the workers, at most "
                        f"{MAX_SHARD_IMAGES})")
    p.add_argument("--inject-crash", type=number(int, 0), default=None, metavar="K",
                   help="fault injection (testing): the first attempt of shard K kills its Ray worker process once "
                        "the shard has run, before it returns; Ray retries the shard")
    p.add_argument("--observer", default="minmax", choices=OBSERVER_NAMES, help="activation observer")
    p.add_argument("--lis-rule", default=DEFAULT_LIS_RULE, choices=sorted(LIS_RULES),
                   help=f"LIS rounding rule (default {DEFAULT_LIS_RULE})")
    p.add_argument("--clock-mhz", type=number(float, 0, low_open=True), default=100.0,
                   help="clock for images/s (default 100 MHz)")
    p.add_argument("--json", type=arg_type(writable_file), help="write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    cache.add_argument(p)
    return p


def results_folder(text: str):
    """--results: a folder (created if missing), not a file."""
    from pathlib import Path

    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; expected a folder for the results store")
    return path


def refusal(args) -> str | None:
    """Why the run cannot go ahead, decided from the arguments alone (before calibrating); None if it can."""
    if args.inject_crash is not None and args.workers == 1 and args.ray is None:
        return ("--inject-crash kills a Ray worker process; with --workers 1 and no --ray the shards run in this "
                "process (use --workers 2 or more)")
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from calib.config import QuantConfig
    from calib.export import fingerprint
    from calib.pipeline import quantize
    from sw import driver, shards
    from sw.compiler import CompileError
    from sw.results_store import ResultsStore

    torch.set_grad_enabled(False)
    t_start = time.perf_counter()
    progress = not args.quiet
    # PTF and LIS (the accelerator's softmax) always on. The shards evaluate the float, fake-quant and
    # integer models beside the backend, image by image (sw/shards.py), so the driver does not.
    q = quantize(args.model, QuantConfig(args.observer, ptf=True, lis=True, lis_rule=args.lis_rule),
                 checkpoint=args.checkpoint, data_dir=args.data, synthetic=args.synthetic, images=args.images,
                 progress=progress, evaluation=False)
    im, images = q.im, len(q.test_set)

    rows, cols = args.array
    n_ops = None
    if im.arch == "vit":
        depth = im.config["depth"]
        layers = depth if args.layers is None else args.layers
        if layers > depth:
            raise CompileError(f"--layers must be in 1..{depth} ({args.model} has {depth} blocks), got {layers}")
        cfg = driver.top_config(im, rows, cols, act_kib=args.act_kib, weight_kib=args.weight_kib)
        with console.status("Compiling every op for the accelerator (on the first image)"):
            n_ops = driver.plan(im, q.images([0])[0], cfg, layers)[1]  # errors before any build or shard
    else:  # Swin: the integer reference only (refusal() turned away --backend sim and --layers)
        depth = layers = sum(im.config["depths"])
        cfg = None
    perf = args.mode == "perf" and args.backend == "sim"
    setup = shards.Setup(args.backend, fingerprint(im), cfg, args.target, layers if im.arch == "vit" else None,
                         full=layers == depth, check=not perf, jitter=args.host_jitter)
    if args.backend == "sim" and args.ray is None:  # this machine's workers find the build in the cache
        with console.status(f"Generating the {rows}x{cols} top ({args.target}) and building it with Verilator "
                            "(cached after the first run)"):
            driver.build_sim(cfg, args.target)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    where = (f"{args.workers} Ray workers" + (f" at {args.ray}" if args.ray else "")
             if args.workers > 1 or args.ray else "this process")
    with ResultsStore(args.results, setup.store_config()) as store, \
            Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task(f"images on the {args.backend} backend ({where})", total=images, rate="")
        ops_task = (bar.add_task("  ops of the current shard", total=n_ops, rate="")
                    if n_ops and args.workers == 1 and args.ray is None and args.backend == "sim" else None)
        t_eval, first = time.perf_counter(), []

        def on_progress(done, total, ops):
            if not first:
                first.append(done)  # images stored by an earlier run: not in the rate
            elapsed = time.perf_counter() - t_eval
            rate = (done - first[0]) / elapsed if elapsed > 0 and done > first[0] else None
            bar.update(task, completed=done, rate=f"{rate:.2f} images/s" if rate else "")
            if ops_task is not None:
                bar.update(ops_task, completed=ops or 0)

        try:
            counts = shards.evaluate(setup, q.path, (q.model, q.sim), images, q.inputs, store, workers=args.workers,
                                     on_ray=args.workers > 1 or args.ray is not None, ray_address=args.ray,
                                     shard_images=args.shard_images, crash_shard=args.inject_crash,
                                     progress=on_progress)
        except KeyboardInterrupt:
            if args.results:
                stored = len(store.records(range(images)))
                console.print(f"interrupted: {stored} of {images} images are stored in {args.results}; "
                              "the same command resumes from there")
            raise
        records, summaries = store.records(range(images)), store.summaries(range(images))
    report = report_of_records(args, records, summaries, cfg, layers, depth, perf)
    report.update({"export": str(q.path), "images_stored_before": counts["stored_before"],
                   "shards_run": counts["shards"], "crashes_injected": counts["crashes_injected"], "wall_s": time.perf_counter() - t_start})
    print_report(console, report)
    return report


def _summed(dicts):
    """Key-wise sums of dicts of numbers (or of such dicts)."""
    out = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = _summed([out.get(k, {}), v]) if isinstance(v, dict) else out.get(k, 0) + v
    return out


def report_of_records(args, records: list[dict], summaries: list[dict], cfg, layers: int, depth: int,
                      perf: bool) -> dict:
    """The run's report, from the results store's records (one per image) and the summaries of
    their shards: whatever ran them (this process, Ray workers, earlier runs resumed)."""
    from sw.compiler import model_ops

    rows, cols = args.array
    full = layers == depth
    images = len(records)
    tensors = _summed(s["tensors"] for s in summaries)
    # the backend's is None for a partial run: it ends in the residual stream, not logits
    top1 = {kind: None if kind == "backend" and not full else
            100.0 * sum(r[f"{kind}_pred"] == r["label"] for r in records) / max(images, 1)
            for kind in ("float", "fakequant", "integer", "backend")}
    mismatching = [r["image"] for r in records if not r["bit_exact"]]
    report = {
        "model": args.model, "backend": args.backend, "images": images, "export": None,
        "mode": "perf" if perf else "check", "array": f"{rows}x{cols}" if cfg else None,
        "target": args.target if args.backend == "sim" else None, "layers": layers, "depth": depth,
        "top": cfg.to_dict() if cfg else None, "top1": top1,
        "bit_exact": not mismatching, "mismatches": sum(r["mismatches"] for r in records),
        "mismatching_images": mismatching,  # image indices whose output or an intermediate differs
        "tensors_compared": len(tensors), "elements_compared": sum(t["elements"] for t in tensors.values()),
        "tensors": tensors,
        "predictions": [r["backend_pred"] for r in records] if full else None,  # the backend's class per test image
        "workers": args.workers, "ray": args.ray, "results": str(args.results) if args.results else None,
        "shards": len(summaries), "clock_mhz": args.clock_mhz, "wall_s": None,
    }
    timed = [s for s in summaries if s["cycles"] is not None]
    if timed:
        stats = _summed(s["stats"] for s in timed)
        ops = model_ops(stats)
        macs = sum(s["macs"] for s in ops.values())
        total = sum(s["cycles"] for s in timed)
        timed_images = sum(len(s["images"]) for s in timed)
        per_image = total / timed_images
        sim_seconds = sum(s["sim_seconds"] or 0 for s in timed)
        report.update({
            # over the shards that ran the images (a shard's images share its weight loads)
            "cycles": {"total": total, "per_image": per_image, "images": timed_images,
                       "by_op": {k: s["cycles"] for k, s in ops.items()},
                       # check mode's read-backs of the attention chain's intermediates, not in the total
                       "check": sum(s["check_cycles"] or 0 for s in timed)},
            "op_calls": {k: s["calls"] for k, s in ops.items()},
            "host_link_bytes": _summed(s["host_link_bytes"] for s in timed),
            "host_link_bytes_check": sum(s["host_link_bytes_check"] for s in timed),
            "macs": macs,
            "mac_utilization": macs / (total * rows * cols),
            # the op's model MACs over its cycles x R x C: attention's include attention x V, which
            # runs beside the array, so it may exceed 100 %
            "mac_utilization_by_op": {k: s["macs"] / max(s["cycles"] * rows * cols, 1)
                                      for k, s in ops.items() if s["macs"]},
            "images_per_s": args.clock_mhz * 1e6 / per_image,
            "sim_cycles_per_s": total / sim_seconds if sim_seconds else None,
        })
    else:  # the reference has no clock
        report.update({"cycles": None, "macs": None, "mac_utilization": None, "images_per_s": None,
                       "host_link_bytes": None})
    return report


def print_report(console, r: dict) -> None:
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
    if r["results"]:
        table.add_row("results store", f"{r['results']} ({r['images_stored_before']} images found there, "
                                        f"{r['shards_run']} shards run now)")
    table.add_row("wall time", f"{r['wall_s']:.1f} s")
    console.print(table)
    if r["cycles"]:
        ops = Table(title="cycles by op kind")
        for col in ("op", "calls", "cycles", "share", "MACs / (cycles x R x C)"):
            ops.add_column(col, justify="left" if col == "op" else "right")
        total = r["cycles"]["total"]
        for kind, cycles in sorted(r["cycles"]["by_op"].items(), key=lambda kv: -kv[1]):
            util = r["mac_utilization_by_op"].get(kind)
            ops.add_row(OP_LABELS.get(kind, kind), str(r["op_calls"][kind]), f"{cycles:,}",
                        f"{100 * cycles / total:.1f} %", "" if util is None else f"{100 * util:.1f} %")
        console.print(ops)
    if r["mismatching_images"]:
        console.print(f"[red]images not bit-exact[/red]: {r['mismatching_images'][:50]}")
    bad = {name: t for name, t in r["tensors"].items() if t["mismatches"]}
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
        from sw.results_store import StoreError

        try:
            report = run(args, console)
        except (ModelError, DataError, ExportError, CompileError, ToolchainError, StoreError, ValueError, RuntimeError,
                ConnectionError) as err:
            console.print(f"[red]error:[/red] {err}")
            return 2
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0 if report["bit_exact"] else 1

    return guarded(work)


if __name__ == "__main__":
    sys.exit(main())
