"""``python -m sw.bench`` (``nox -s bench``): the performance report, docs/performance.md.

Everything is measured on this machine in one run, on the Verilated top with an 8x8 array:

1. systolic utilization on the GEMM shapes of the digits model and DeiT-T/S/B (197 tokens), each
   GEMM a `linear` program with random codes (weight and slab loads, requantization included),
   checked bit for bit against the reference, against the ideal of R*C MACs per cycle;
2. cycles per image and images/s at the clock `nox -s synth` achieved for the top (or a stated
   one): the digits model and DeiT-Tiny simulated whole (every tensor bit-exact), and the analytic
   extrapolation from a simulated first block (pre + depth x block + final LayerNorm + head) with
   its error against the whole simulation; whole-model MAC utilization; a timeline of DeiT-Tiny's
   first block (which engines each op keeps busy);
3. simulation speed: cycles/s of whole runs, of the RTL alone (from `go` to `done`), the share
   of wall time spent in Python, the ratio against the bare array driven beat by beat from
   Python (the cocotb testbench), and the simulation build of the top (idle units' clocks gated,
   FIFOs in one slice) against the top as synthesized, on the same harness and flags, on the same work, all measured in the
   same run;
4. calibration time of the digits model and of the DeiT-Tiny architecture;
5. scale-out: images/s of sharded runs (sw/shards.py) with 1 and 2 Ray workers on one local Ray
   instance, the same shards alternated in the same run, for digits (whole model) and DeiT-Tiny
   (first block) on the sim backend; and from the measured seconds per image, the workers needed
   to push ImageNet's 50,000 validation images through the integer reference in 1 hour and
   through the RTL in 24 hours.

Machine-dependent figures are medians of ``--repeat`` runs. The numbers also go to ``--json``
(default: beside ``--out``), from which ``--from-json`` rewrites the page.
"""

# Only torch-free modules at the top: --help and usage errors answer without loading torch.
import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fqvit import cache
from fqvit.cli import add_report_arguments, guarded, number, report_paths
from fqvit.contract import DEFAULT_LIS_RULE

ARRAY = (8, 8)
DEIT = {"DeiT-T": (197, 192, 768, 1000), "DeiT-S": (197, 384, 1536, 1000), "DeiT-B": (197, 768, 3072, 1000)}
MODEL_NAMES = ("digits", *DEIT)


def models() -> dict:
    """name: (tokens, embed dim, MLP hidden, classes) of the digits model and DeiT-T/S/B."""
    from calib.digits import DigitsConfig

    d = DigitsConfig()
    return {"digits": ((d.img_size // d.patch_size) ** 2 + 1, d.embed_dim, int(d.embed_dim * d.mlp_ratio), 10), **DEIT}


def bench_top():
    """The top the GEMMs run on: buffers and channels for DeiT-B's widest layer."""
    from hw.top import TopConfig

    return TopConfig(*ARRAY, act_kib=32, weight_kib=64, max_channels=4096, softmax_rule=DEFAULT_LIS_RULE)


def gemm_shapes(names) -> list[tuple[str, str, tuple[int, int, int]]]:
    dims = models()
    rows = []
    for name in names:
        t, d, h, _ = dims[name]
        rows += [(name, "qkv", (t, d, 3 * d)), (name, "proj", (t, d, d)), (name, "fc1", (t, d, h)),
                 (name, "fc2", (t, h, d))]
    return rows


def run_gemms(shapes, console) -> list[dict]:
    from sw import driver

    top = bench_top()
    compiled = driver.build_sim(top)
    with console.status(f"{len(shapes)} GEMMs through the Verilated top"):
        result = driver.simulate(compiled, top, {"gemms": [list(s) for _, _, s in shapes]})
    out = []
    for (model, layer, shape), r in zip(shapes, result["gemms"]):
        ideal = r["macs"] / (ARRAY[0] * ARRAY[1])
        out.append({"model": model, "layer": layer, "shape": shape, "cycles": r["cycles"], "ideal_cycles": ideal,
                    "utilization": ideal / r["cycles"], "bit_exact": r["bit_exact"]})
    return out


def baseline_build(cfg):
    """The top as synthesis reads it (rtl_gen's generic Verilog: no gated clocks, FIFOs in slices),
    on the same harness process and build flags as sw/driver.build_sim's; it runs the same programs
    in the same cycles."""
    from sw import driver

    return driver.build_sim(cfg, gated=False)


def model_run(model: str, images: int, layers: int | None, build=None, cfg=None) -> dict:
    """Quantize (as sw/run_vit.py does), then run on the sim backend (`build(cfg)`: the compiled top,
    default the current one; `cfg`: the top, default the model's as run_vit.py sizes it); cycles,
    per-op log and simulation times."""
    from calib.catalog import DIGITS
    from calib.config import QuantConfig
    from calib.pipeline import integer_forward, predict, quantize
    from sw import driver
    from sw.compiler import model_ops

    q = quantize(model, QuantConfig(lis_rule=DEFAULT_LIS_RULE), synthetic=model != DIGITS, images=images,
                 batch_size=images, progress=False)
    depth = q.im.config["depth"] if layers is None else layers
    cfg = cfg or driver.top_config(q.im, *ARRAY)
    # what a shard (sw/shards.py) spends beside the backend: the integer reference of the whole
    # model (the ref backend's work), and the float and fake-quant predictions
    x, _ = q.inputs(range(images))
    codes = q.im.quantize_input(x)
    t0 = time.perf_counter()
    integer_forward(q.im, codes)
    ref_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict(q.model, q.sim, q.im, x, ("float", "fakequant"))
    float_s = time.perf_counter() - t0
    reference, _ = driver.plan(q.im, codes, cfg, depth)
    compiled = (build or driver.build_sim)(cfg)
    t0 = time.perf_counter()
    got = driver.run_sim(compiled, cfg, q.im, codes, depth, check=False)  # performance mode
    wall = time.perf_counter() - t0
    mismatches = sum(t["mismatches"] for t in driver.compare(driver.final_output(reference.trace),
                                                             driver.final_output(got.trace)).values())
    return {"model": model, "images": images, "layers": depth, "full_depth": q.im.config["depth"],
            "cycles": got.cycles, "log": got.log, "wall_s": wall,
            "macs": sum(s["macs"] for s in model_ops(got.stats).values()), "sim_s": got.sim_seconds,
            "rtl_s": got.rtl_seconds, "mismatches": mismatches, "calibrate_s": q.calibrate_s, "im": q.im,
            "ref_s": ref_s, "float_s": float_s}


def first_block(run: dict) -> list:
    """The (op kind, cycles) entries of a run's first transformer block."""
    from calib.intref.vit import BLOCK_OPS, PRE_OPS

    return run["log"][len(PRE_OPS):len(PRE_OPS) + len(BLOCK_OPS)]


def extrapolate(run: dict, head_cycles: int) -> int:
    """Cycles of the whole model from a run of its first block: pre (patch embed + position add),
    depth x block, the final LayerNorm (the size of the block's first, norm1) and the head."""
    from calib.intref.vit import PRE_OPS

    block = first_block(run)
    pre = sum(c for _, c in run["log"][:len(PRE_OPS)])
    return pre + run["full_depth"] * sum(c for _, c in block) + block[0][1] + head_cycles


SCALING = (("digits-vit, whole model", "digits-vit", 48, None, 4),
           ("DeiT-Tiny, first block", "deit_tiny_patch16_224", 4, 1, 1))  # run, model, images, layers, shard
WORKERS = (1, 2)
IMAGENET_VAL = 50_000


def scaling(repeat: int) -> list[dict]:
    """Images/s of sharded sim-backend runs (performance mode) on one local Ray instance, with each
    of WORKERS on the same shards, alternated `repeat` times (medians), after every worker process
    has warmed up (its imports, the shipped model, the build found in the cache): the evaluation's
    own rate, not Ray's start."""
    from calib.config import QuantConfig
    from calib.export import fingerprint
    from calib.pipeline import quantize
    from sw import driver, shards
    from sw.results_store import ResultsStore

    out = []
    with shards.ray_session(max(WORKERS)):
        for name, model, images, layers, shard in SCALING:
            q = quantize(model, QuantConfig(lis_rule=DEFAULT_LIS_RULE), synthetic=model != "digits-vit",
                         images=images, batch_size=images, progress=False)
            cfg = driver.top_config(q.im, *ARRAY)
            driver.build_sim(cfg)
            setup = shards.Setup("sim", fingerprint(q.im), cfg, "generic", layers or q.im.config["depth"],
                                 full=layers is None, check=False, jitter=False)

            def rate(workers, n):
                with ResultsStore(None, setup.store_config()) as store:
                    t0 = time.perf_counter()
                    shards.evaluate(setup, q.path, (q.model, q.sim), n, q.inputs, store, workers=workers,
                                    on_ray=True, shard_images=shard)
                    seconds = time.perf_counter() - t0
                    bad = [r["image"] for r in store.records(range(n)) if not r["bit_exact"]]
                if bad:
                    raise NotBitExact(f"{name}: images {bad} are not bit-exact on the sharded run")
                return n / seconds

            rate(max(WORKERS), max(WORKERS) * shard)  # warm-up: every worker process started
            runs = {w: [] for w in WORKERS}
            for _ in range(repeat):
                for w in WORKERS:
                    runs[w].append(rate(w, images))
            ips = {str(w): statistics.median(v) for w, v in runs.items()}
            out.append({"run": name, "images": images, "shard_images": shard, "images_per_s": ips,
                        "speedup": ips[str(WORKERS[-1])] / ips[str(WORKERS[0])]})
    return out


def workers_needed(runs: dict, efficiency: float) -> list[dict]:
    """Workers for IMAGENET_VAL images through the integer reference in 1 hour and through the RTL
    in 24 hours, from `runs` (model: (seconds per image on the reference, on the RTL with its
    reference, how)), at the parallel `efficiency` measured (speedup over workers)."""
    import math

    return [{"model": model, "ref_s": ref_s, "rtl_s": rtl_s, "how": how,
             "ref_workers_1h": math.ceil(IMAGENET_VAL * ref_s / 3600 / efficiency),
             "rtl_workers_24h": math.ceil(IMAGENET_VAL * rtl_s / 86400 / efficiency)}
            for model, (ref_s, rtl_s, how) in runs.items()]


def bare_array_speed() -> float:
    """Cycles/s of the bare 8x8 array driven beat by beat from Python (cocotb), the baseline."""
    from hw.systolic import SystolicConfig
    from rtl_gen import generate_systolic
    from sim import toolchain

    config = SystolicConfig(*ARRAY)
    generated = generate_systolic(config)
    compiled = toolchain.build(generated.verilog, generated.name)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        job = {"m": 64, "k": 192, "n": 64, "seed": 0, "report": str(report)}
        toolchain.run_tests(compiled, "sim.tb.systolic", testcase="matmul_job", test_dir=Path(tmp),
                            log_file=Path(tmp) / "log",
                            extra_env={"SYSTOLIC_CONFIG": json.dumps(config.to_dict()), "MATMUL_JOB": json.dumps(job)})
        return json.loads(report.read_text())["sim_cycles_per_s"]


def fmax_of_top() -> tuple[float | None, str]:
    """The fmax (seed 1) of the default top with the bench's array (the one the whole models run on)
    from `python -m rtl_gen.synth`'s JSON (its default place), with where it came from. A row of
    another design (an older top, other buffers) does not count: its clock is not this hardware's."""
    from hw.top import TopConfig
    from rtl_gen.synth import DEFAULT_JSON

    name = TopConfig(*ARRAY).name
    path = Path(DEFAULT_JSON)
    if path.is_file():
        for row in json.loads(path.read_text()):
            if row.get("unit") == "top" and row.get("top") == name and row.get("fmax_mhz"):
                at = f" of its hardware at `{row['revision']}`" if row.get("revision") else ""
                return row["fmax_mhz"], f"`{row['top']}` after place and route{at} (`nox -s synth`)"
    return None, f"no place-and-route result for `{name}` yet (run `nox -s synth`); 100 MHz assumed"


def plot(gemms: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    labels = [f"{g['model']}\n{g['layer']}" for g in gemms]
    ax.bar(range(len(gemms)), [100 * g["utilization"] for g in gemms], color="#4477aa")
    ax.axhline(90, color="#cc3311", linestyle="--", linewidth=1, label="90 %")
    ax.set_xticks(range(len(gemms)), labels, fontsize=7)
    ax.set_ylabel("MAC utilization (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{ARRAY[0]}x{ARRAY[1]} array on ViT GEMMs (Verilated top, loads and requantization included)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# The engines each op kind keeps busy (the timeline's rows).
ENGINES = ("array", "requantizer + GELU", "LIS softmax", "attention x V", "LayerNorm", "residual add")
OP_ENGINES = {"linear": ("array", "requantizer + GELU"),
              "attention": ("array", "requantizer + GELU", "LIS softmax", "attention x V"),
              "layernorm": ("LayerNorm",), "add": ("residual add",)}


def plot_timeline(timeline: dict, path: Path) -> None:
    """One block's ops in order (their cycles from the simulation), each drawn on the engines it uses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.2))
    colors = {"linear": "#4477aa", "attention": "#228833", "layernorm": "#ccbb44", "add": "#ee6677"}
    start = 0
    for kind, cycles in timeline["ops"]:
        for engine in OP_ENGINES[kind]:
            ax.broken_barh([(start / 1e3, cycles / 1e3)], (ENGINES.index(engine) - 0.4, 0.8), color=colors[kind])
        start += cycles
    ax.set_yticks(range(len(ENGINES)), ENGINES)
    ax.invert_yaxis()
    ax.set_xlabel("k cycles")
    ax.set_xlim(0, start / 1e3)
    ax.set_title(f"{timeline['model']}, one block on the {ARRAY[0]}x{ARRAY[1]} top: the engines each op keeps busy")
    ax.legend(handles=[matplotlib.patches.Patch(color=c, label=k) for k, c in colors.items()], loc="lower right",
              fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(r: dict) -> str:
    lines = ["# Performance", "",
             "Generated by `python -m sw.bench` (`nox -s bench`); do not edit by hand. "
             f"Machine: {r['machine']}; medians of {r['repeat']} runs where marked.", "",
             f"## Systolic utilization on ViT GEMMs ({ARRAY[0]}x{ARRAY[1]} array)", "",
             "Each GEMM runs as a `linear` program on the Verilated top: weight and activation-slab loads, the "
             "array and the requantizer, with random codes, checked bit for bit against the integer reference. "
             "Utilization = MACs / (cycles x R x C).", "",
             f"![utilization]({r['plot']})", "",
             "| model | layer | M x K x N | cycles | ideal cycles | utilization | bit-exact |", "|---|---|---|---|---|---|---|"]
    for g in r["gemms"]:
        m, k, n = g["shape"]
        lines.append(f"| {g['model']} | {g['layer']} | {m} x {k} x {n} | {g['cycles']:,} | {g['ideal_cycles']:,.0f} | "
                     f"{100 * g['utilization']:.1f} % | {str(g['bit_exact']).lower()} |")
    lines += ["", "What limits it: slabs of R tokens, so 197 tokens leave a ragged last slab of 5 rows on an 8-row "
              "array (197 / 200 = 98.5 % at best; the digits model's 17 tokens: 17 / 24); each MATMUL command drains "
              "the array (its latency plus 2R cycles) before the next starts; the first slab and each weight chunk "
              "load while the array waits (later slabs load during the previous MATMUL). DeiT-B's fc2 (K = 3072) "
              "is the exception: two slabs (2K words) do not fit the 32 KiB activation buffer, so slabs load while "
              "the array waits, and a 64 KiB weight chunk holds only 2 tiles of K = 3072, so every slab is loaded "
              "once per chunk (48 times).", "",
              "## Whole models", "",
              f"Clock: {r['clock_mhz']:g} MHz ({r['clock_source']}).", "",
              "| model | images | cycles per image | MAC utilization | images/s | how |", "|---|---|---|---|---|---|"]
    for m in r["models"]:
        lines.append(f"| {m['model']} | {m['images']} | {m['cycles_per_image']:,.0f} | {100 * m['mac_utilization']:.1f} % "
                     f"| {m['images_per_s']:,.1f} | {m['how']} |")
    errors = ", ".join(f"{m} {e:+.2f} %" for m, e in r["extrapolation_error_pct"].items())
    lines += ["", f"Analytic model check: whole-model cycles predicted from the first block (pre + depth x block + "
              f"final LayerNorm + head GEMM) against the whole simulation: {errors}. The top's timing does not "
              "depend on the data, so blocks of one model cost the same; the model is exact up to the head.", "",
              "MAC utilization: every multiply-accumulate of the model (patch embedding, qkv, Q.K^T, attention x V, "
              "proj, fc1, fc2, head) over cycles x R x C. Attention x V runs beside the array (hw/attention.py), "
              "so its MACs cost the array no cycles. Performance mode: the attention chain's intermediates stay "
              "on chip and the final output is compared with the integer reference.", "",
              "Per transformer block (the first, simulated, performance mode; the block's MACs from its "
              "dimensions: qkv, proj, fc1, fc2, Q.K^T and attention x V):", "",
              "| model | cycles per block | MAC utilization |", "|---|---|---|",
              *(f"| {b['model']} | {b['cycles']:,} | {100 * b['mac_utilization']:.1f} % |" for b in r["blocks"]), "",
              f"![timeline]({r['timeline_plot']})", "",
              "The timeline of one DeiT-Tiny block (the first, simulated), at the granularity of ops: an engine "
              "is drawn busy while an op that uses it runs. Ops run one after another, LayerNorm and the residual "
              "adds with the array idle (their operands still cross the host link); inside the attention op the "
              "array, the softmax and attention x V work at the same time (hw/attention.py).", "",
              "| op | cycles |", "|---|---|",
              *(f"| {kind} | {cycles:,} |" for kind, cycles in r["timeline"]["ops"]), "",
              "## Simulation speed", "",
              "| run | cycles | wall s | cycles/s (whole run) | cycles/s (RTL alone) | Python share | wall s per image |",
              "|---|---|---|---|---|---|---|"]
    for s in r["speed"]:
        lines.append(f"| {s['run']} | {s['cycles']:,} | {s['wall_s']:.1f} | {s['cycles_per_s']:,.0f} | "
                     f"{s['rtl_cycles_per_s']:,.0f} | {100 * s['python_share']:.0f} % | {s['wall_per_image_s']:.1f} |")
    b = r["builds"]
    lines += ["", f"Baseline in the same run: the bare {ARRAY[0]}x{ARRAY[1]} array driven beat by beat from Python "
              f"(cocotb testbench) ran {r['bare_cycles_per_s']:,.0f} cycles/s; the top with its host harness runs "
              f"{r['speedup_vs_bare']:.1f}x that (RTL alone). Python share = wall time outside `go`..`done` "
              "(compiling programs, writing and reading the host memory files, the model's forward).", "",
              f"The build of the top as synthesis reads it (no gated clocks, FIFOs in slices), on the same harness "
              f"process and build flags, in the same run on the same work ({b['work']}, medians of {r['repeat']}): "
              f"{b['baseline_rtl_cycles_per_s']:,.0f} cycles/s with the RTL alone, "
              f"{b['current_rtl_cycles_per_s']:,.0f} for the simulation build, {b['ratio']:.2f}x, in the same cycles. "
              "The simulation build gates the clock of every unit no command is using, so Verilator skips its "
              "logic, and builds every FIFO as one slice (rtl_gen.SimulationPlatform, hw/fifo.py); the "
              "harness runs under a C++ main loop of its own instead of cocotb's (sim/host.py).", "",
              "## Calibration time", "", "| model | calibration images | seconds |", "|---|---|---|"]
    for c in r["calibration"]:
        lines.append(f"| {c['model']} | {c['images']} | {c['seconds']:.2f} |")
    lines += ["", "## Scale-out on Ray", "",
              "`run_vit.py --workers W` (sw/shards.py): the images in shards, each a Ray task that runs its images "
              "in one batch on the sim backend. Measured on one local Ray instance in the same run, the same shards "
              f"with 1 and 2 workers alternated (medians of {r['repeat']}), after the worker processes have started; "
              "images/s of the evaluation, performance mode. This machine has "
              f"{r['machine'].rsplit(', ', 1)[-1]}: 2 workers share them with the driver and Ray's own processes.", "",
              "| run | images | images per shard | 1 worker, images/s | 2 workers, images/s | speedup |",
              "|---|---|---|---|---|---|"]
    for s in r["scaling"]:
        lines.append(f"| {s['run']} | {s['images']} | {s['shard_images']} | {s['images_per_s']['1']:.2f} | "
                     f"{s['images_per_s']['2']:.2f} | {s['speedup']:.2f}x |")
    lines += ["", f"Workers (one core each) to run ImageNet's {IMAGENET_VAL:,} validation images, from the seconds "
              "per image measured above on this machine, at the parallel efficiency the DeiT-Tiny row measured "
              f"({100 * r['scaling_efficiency']:.0f} %: speedup over workers). Seconds per image of a shard: the "
              "backend (the RTL: simulating and compiling its programs), the integer reference it is compared "
              "with (on the ref backend, the backend itself), and the float and fake-quant predictions.", "",
              "| model | reference backend, s/image | RTL backend, s/image | workers: reference in 1 h | workers: RTL in 24 h | how |",
              "|---|---|---|---|---|---|"]
    for w in r["workers_needed"]:
        lines.append(f"| {w['model']} | {w['ref_s']:.2f} | {w['rtl_s']:.1f} | {w['ref_workers_1h']:,} | "
                     f"{w['rtl_workers_24h']:,} | {w['how']} |")
    return "\n".join(lines) + "\n"


def with_clock(r: dict) -> dict:
    """`r` with the top's clock (rtl_gen.synth's JSON, else 100 MHz) and each model's images/s at it."""
    fmax, source = fmax_of_top()
    r["clock_mhz"], r["clock_source"] = fmax or 100.0, source
    for model in r["models"]:
        model["images_per_s"] = r["clock_mhz"] * 1e6 / model["cycles_per_image"]
    return r


class NotBitExact(RuntimeError):
    """A benchmark run whose tensors differ from the integer reference: its figures mean nothing."""


def measure(args, console) -> dict:
    """Every figure of the page (sections 1-4 of the module docstring)."""
    import os
    import platform

    from calib.catalog import DIGITS

    r = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "repeat": args.repeat}
    shapes = gemm_shapes(["digits", "DeiT-T"] if args.quick else list(MODEL_NAMES))
    heads = [("digits", "head", (8, models()["digits"][1], 10)), ("DeiT-T", "head", (1, 192, 1000))]
    console.print(f"GEMMs: {len(shapes)} shapes on the {ARRAY[0]}x{ARRAY[1]} top")
    measured = run_gemms(shapes + heads, console)
    r["gemms"], head_runs = measured[:len(shapes)], measured[len(shapes):]

    console.print("digits model, whole and first block; DeiT-Tiny first block, on the current and the baseline build")
    digits = [model_run(DIGITS, 8, None) for _ in range(args.repeat)]
    digits_block = model_run(DIGITS, 8, 1)
    pairs = [(model_run("deit_tiny_patch16_224", 1, 1), model_run("deit_tiny_patch16_224", 1, 1, baseline_build))
             for _ in range(args.repeat)]  # interleaved: a machine busier at times slows both alike
    deit_runs, deit_baseline = [p[0] for p in pairs], [p[1] for p in pairs]
    deit = deit_runs[0]
    console.print("DeiT-Tiny, whole model (12 blocks) through the RTL")
    deit_full = model_run("deit_tiny_patch16_224", 1, None)
    for run in (*digits, digits_block, *deit_runs, *deit_baseline, deit_full):
        if run["mismatches"]:
            raise NotBitExact(f"{run['model']} is not bit-exact on the top ({run['mismatches']} mismatches)")
    full = statistics.median(d["cycles"] for d in digits)
    r["extrapolation_error_pct"] = {
        "digits-vit": 100 * (extrapolate(digits_block, head_runs[0]["cycles"]) - full) / full,
        "deit_tiny_patch16_224": 100 * (extrapolate(deit, head_runs[1]["cycles"]) - deit_full["cycles"])
        / deit_full["cycles"]}
    console.print("DeiT-Small and DeiT-Base, first block (on the GEMMs' top)")
    block_runs = {"DeiT-T": deit, "DeiT-S": model_run("deit_small_patch16_224", 1, 1, cfg=bench_top()),
                  "DeiT-B": model_run("deit_base_patch16_224", 1, 1, cfg=bench_top())}
    for run in block_runs.values():
        if run["mismatches"]:
            raise NotBitExact(f"{run['model']} is not bit-exact on the top ({run['mismatches']} mismatches)")
    r["blocks"] = []
    for name, run in block_runs.items():
        t, d, h, _ = DEIT[name]
        cycles = sum(c for _, c in first_block(run))
        macs = t * d * (4 * d + 2 * h) + 2 * t * t * d  # qkv, proj, fc1, fc2; Q.K^T, attention x V
        r["blocks"].append({"model": name, "cycles": cycles, "macs": macs,
                            "mac_utilization": macs / (cycles * ARRAY[0] * ARRAY[1])})
    deit_cycles = deit_full["cycles"]
    r["timeline"] = {"model": "DeiT-Tiny", "ops": [list(op) for op in first_block(deit)]}
    # every multiply-accumulate of the model (attention x V's too, done beside the array) over cycles x R x C
    r["models"] = [
        {"model": "digits-vit", "images": 8, "cycles_per_image": full / 8,
         "mac_utilization": digits[0]["macs"] / (full * ARRAY[0] * ARRAY[1]),
         "how": "simulated, whole model, 8 images batched, performance mode"},
        {"model": "deit_tiny_patch16_224", "images": 1, "cycles_per_image": deit_cycles,
         "mac_utilization": deit_full["macs"] / (deit_cycles * ARRAY[0] * ARRAY[1]),
         "how": "simulated, whole model (12 blocks), performance mode"},
    ]
    r = with_clock(r)

    def speed(name, runs, images):
        med = lambda key: statistics.median(x[key] for x in runs)  # noqa: E731
        return {"run": name, "cycles": int(med("cycles")), "wall_s": med("wall_s"),
                "cycles_per_s": med("cycles") / med("wall_s"), "rtl_cycles_per_s": med("cycles") / med("rtl_s"),
                "python_share": 1 - med("rtl_s") / med("wall_s"), "wall_per_image_s": med("wall_s") / images}
    r["speed"] = [speed("digits-vit, whole model, 8 images", digits, 8),
                  speed("DeiT-Tiny, first block, 1 image", deit_runs, 1),
                  speed("DeiT-Tiny, whole model, 1 image", [deit_full], 1)]
    current = r["speed"][1]["rtl_cycles_per_s"]
    baseline = statistics.median(x["cycles"] for x in deit_baseline) / statistics.median(x["rtl_s"] for x in deit_baseline)
    r["builds"] = {"work": "DeiT-Tiny, first block, 1 image", "current_rtl_cycles_per_s": current,
                   "baseline_rtl_cycles_per_s": baseline, "ratio": current / baseline}
    r["bare_cycles_per_s"] = statistics.median(bare_array_speed() for _ in range(args.repeat))
    r["speedup_vs_bare"] = r["speed"][0]["rtl_cycles_per_s"] / r["bare_cycles_per_s"]
    r["calibration"] = [{"model": "digits-vit", "images": 250, "seconds": statistics.median(d["calibrate_s"] for d in digits)},
                        {"model": "deit_tiny_patch16_224 (random init)", "images": 8, "seconds": deit["calibrate_s"]}]
    console.print(f"Scale-out: {', '.join(s[0] for s in SCALING)} with {' and '.join(map(str, WORKERS))} Ray workers")
    r["scaling"] = scaling(args.repeat)
    r["scaling_efficiency"] = min(1.0, r["scaling"][-1]["speedup"] / WORKERS[-1])
    # seconds per image of a shard: the backend, the integer reference and the float and fake-quant
    # predictions (on the ref backend the reference is the backend)
    per_image = {"DeiT-T": (deit_full["ref_s"] + deit_full["float_s"],
                            deit_full["wall_s"] + deit_full["ref_s"] + deit_full["float_s"], "whole model, simulated")}
    for name in ("DeiT-S", "DeiT-B"):
        run = block_runs[name]
        per_image[name] = (run["ref_s"] + run["float_s"], run["full_depth"] * run["wall_s"] + run["ref_s"] + run["float_s"],
                           f"RTL: {run['full_depth']} x the first block's")
    r["workers_needed"] = workers_needed(per_image, r["scaling_efficiency"])
    return r


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sw.bench", description=__doc__.splitlines()[0])
    add_report_arguments(p, "docs/performance.md")  # the plot goes beside the page
    p.add_argument("--repeat", type=number(int, 1), default=3, help="runs of the machine-dependent figures (median)")
    p.add_argument("--quick", action="store_true", help="GEMMs of the digits model and DeiT-T only")
    cache.add_argument(p)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    cache.apply(args)
    report_paths(p, args)
    if not args.from_json and importlib.util.find_spec("matplotlib") is None:  # the plot, at the very end
        p.error("the plot needs matplotlib: pip install -e '.[bench]'")

    def work() -> int:
        from rich.console import Console

        console = Console()
        if args.from_json:  # the clock is re-read: a newer place-and-route result updates images/s
            r = with_clock(json.loads(args.json.read_text()))
        else:
            from sim.toolchain import ToolchainError

            try:
                r = measure(args, console)
            except (NotBitExact, ToolchainError) as err:
                console.print(f"[red]error:[/red] {err}")
                return 1 if isinstance(err, NotBitExact) else 2
            plot_path = args.out.with_name("performance_utilization.png")
            plot(r["gemms"], plot_path)
            r["plot"] = plot_path.name
            timeline_path = args.out.with_name("performance_timeline.png")
            plot_timeline(r["timeline"], timeline_path)
            r["timeline_plot"] = timeline_path.name
        args.out.write_text(markdown(r))
        args.json.write_text(json.dumps(r, indent=2, default=str) + "\n")
        if not args.from_json:
            console.print(markdown(r))
        return 0

    return guarded(work)


if __name__ == "__main__":
    sys.exit(main())
