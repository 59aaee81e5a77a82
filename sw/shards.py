"""Sharded evaluation: the test images split into shards, each run as one batch on a backend, in
this process or as Ray tasks, and every shard's per-image records stored (sw/results_store.py).

    evaluate(setup, model_path, (float_model, calibration), images, load, store, workers=W)

* The driver calibrates and exports once; a shard needs the integer model (a path here, its file's
  bytes through Ray's object store elsewhere: a worker writes them into its node's cache), the
  calibrated float model (for the float and fake-quant predictions; through the object store),
  its images and labels, and the ``Setup`` every shard shares.
* A worker computes its shard's integer reference, builds the Verilated top (once per node: the
  build cache is locked, sim/toolchain.py) and runs the shard in one batch, as a single-process run
  does. It returns the records; only the driver writes them, one transaction per shard.
* ``workers`` > 1 or a Ray address: each shard is a Ray task, at most ``workers`` in flight. A
  task whose worker process dies is retried by Ray (``RETRIES`` times); its shard is stored once,
  from the attempt that returned. Without an address a local Ray instance starts on the loopback
  interface and stops at the end; ``workers`` 1 without an address runs in this process, no Ray.
* Images already in the store are skipped (resume); Ctrl-C leaves the store with whole shards only.
"""

from __future__ import annotations  # annotations only: importing this module loads neither torch nor Amaranth

import functools
import math
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fqvit import cache

from .results_store import ResultsStore, image_sha

if TYPE_CHECKING:
    import torch

    from hw.top import TopConfig

__all__ = ["Setup", "run_shard", "evaluate", "ray_session", "RETRIES", "MAX_SHARD_IMAGES"]

RETRIES = 3  # attempts after the first when a worker process dies mid-shard
MAX_SHARD_IMAGES = 8  # the default shard: the images split evenly over the workers, at most this many
CHECKED_IMAGES = 8  # stored images a resumed run compares with its own (spread over the stored ones)


@dataclass(frozen=True)
class Setup:
    """What every shard of a run shares (sent to each worker)."""

    backend: str  # "ref" or "sim"
    fingerprint: str  # the integer model's (calib.export.fingerprint)
    cfg: TopConfig | None  # the accelerator (None for Swin, which runs on the reference only)
    target: str  # the sim backend's Verilog: generic or ecp5
    layers: int | None  # ViT: the blocks run; None: the whole model
    full: bool  # the run ends in the logits (predictions are meaningful)
    check: bool  # compare every intermediate tensor (else the final output: performance mode)
    jitter: bool  # the sim harness offers and takes words at random

    def store_config(self) -> dict:
        """What a shard's records depend on: a results folder holds the records of one such config."""
        return {"model": self.fingerprint, "backend": self.backend, "top": self.cfg.to_dict() if self.cfg else None,
                "target": self.target if self.backend == "sim" else None, "layers": self.layers,
                "mode": "check" if self.check else "perf", "host_jitter": self.jitter}


def _model_file(model, fingerprint: str) -> Path:
    """The integer model as a local file: `model` is its path, or its bytes shipped to this worker
    (written once per node into the cache's exports, named by the fingerprint)."""
    if isinstance(model, Path):
        return model
    path = cache.part("exports") / f"shipped-{fingerprint}.fqvit.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(model)
        partial.replace(path)
    return path


@functools.lru_cache(maxsize=1)
def _load(path: Path, fingerprint: str):
    """The integer model of a run, loaded (and checksummed) once per process, not once per shard;
    keyed by its fingerprint too, as the default export path is rewritten by every run."""
    from calib.export import load

    return load(path)


def _crash_once(marker: str) -> None:
    """Fault injection (``run_vit.py --inject-crash``): the first attempt to reach this point (after
    the shard has run on the backend) kills its worker process, as a lost node would; the retry
    finds the marker and runs the shard again."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    os._exit(1)


def run_shard(setup: Setup, model, float_model, ids: list[int], x: torch.Tensor, labels: torch.Tensor,
              crash_marker: str | None = None, on_op=None) -> dict:
    """One shard on the backend, compared with the integer reference image by image: ``records``
    (one per image, sw/results_store.py's columns) and ``summary`` (the shard's cycles, per-op
    statistics, host-link bytes and per-tensor comparison). `model`: the integer model (its path
    or file bytes); `float_model`: (the float model, its calibration), for the float and fake-quant
    predictions; `x`: the images, normalized. `on_op(ops_done)` while it runs."""
    import torch

    from calib.pipeline import integer_forward, predict

    from . import driver

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    im = _load(_model_file(model, setup.fingerprint), setup.fingerprint)
    codes = im.quantize_input(x)
    # The driver compiled every op for the hardware before the first shard (driver.plan): here the
    # reference is the integer model itself, which is also the whole of the ref backend's work.
    reference = driver.run_ref(im, codes, setup.layers)
    if setup.backend == "ref":
        got = reference
    else:
        got = driver.run_sim(driver.build_sim(setup.cfg, setup.target), setup.cfg, im, codes, setup.layers, on_op,
                             check=setup.check, jitter=setup.jitter)
    if crash_marker is not None:  # mid-shard: the backend's work is done and lost with the process
        _crash_once(crash_marker)
    ref_t, got_t = ((reference.trace, got.trace) if setup.check
                    else (driver.final_output(reference.trace), driver.final_output(got.trace)))
    per_image, tensors = driver.compare_images(ref_t, got_t, len(ids))
    preds, _ = predict(*float_model, im, x, ("float", "fakequant"))  # the whole model's, as the integer's
    preds["integer"] = (reference.out if setup.full else integer_forward(im, codes)).argmax(-1)
    preds["backend"] = got.out.argmax(-1) if setup.full else [None] * len(ids)  # else: the residual stream
    cycles = None if got.cycles is None else got.cycles / len(ids)
    records = [{"image": i, "label": int(labels[j]), **{f"{k}_pred": _int(v[j]) for k, v in preds.items()},
                "bit_exact": per_image[j]["mismatches"] == 0, "mismatches": per_image[j]["mismatches"],
                "elements": per_image[j]["elements"], "cycles": cycles, "image_sha": image_sha(x[j])}
               for j, i in enumerate(ids)]
    summary = {"tensors": tensors, "cycles": got.cycles, "check_cycles": got.check_cycles, "stats": got.stats,
               "host_link_bytes": None if got.cycles is None else driver.host_link_bytes(got.traffic, setup.full),
               "host_link_bytes_check": sum(got.check_traffic.values()), "sim_seconds": got.sim_seconds,
               "wall_s": time.perf_counter() - t0, "host": socket.gethostname(), "pid": os.getpid()}
    return {"records": records, "summary": summary}


def _int(value):
    return None if value is None else int(value)


def shard_ids(todo: list[int], workers: int, shard_images: int | None) -> list[list[int]]:
    """`todo` in shards of `shard_images` (default: split evenly over the workers, at most
    MAX_SHARD_IMAGES each)."""
    size = shard_images or max(1, min(MAX_SHARD_IMAGES, math.ceil(len(todo) / workers)))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def evaluate(setup: Setup, model_path: Path, float_model, images: int, load, store: ResultsStore, *, workers: int = 1,
             on_ray: bool = False, ray_address: str | None = None, shard_images: int | None = None,
             crash_shard: int | None = None, progress=None) -> dict:
    """Run every test image `0 .. images - 1` not yet in `store` and store its records, in this
    process or (`on_ray`) as Ray tasks, `workers` in flight (`ray_session`). `load(ids)` gives the
    normalized images and labels of those images; it is called per shard, as the shard starts, so
    the images of a large run are never all in memory. `float_model`: (float model, calibration). Returns counts: ``stored_before`` (skipped),
    ``run`` (images run now), ``shards`` (shards run now) and ``crashes_injected`` (worker
    processes `crash_shard` killed: 1 if it ran, 0 otherwise).
    `progress(done_images, total, ops_done)`: after every shard (and, in this process, every op)."""
    before = sorted(store.stored(range(images)))
    # the stored images are those of this run's test set: a sample, spread over them, is compared
    sample = [before[i * (len(before) - 1) // (CHECKED_IMAGES - 1)] for i in range(CHECKED_IMAGES)] if before else []
    sample = sorted(set(sample))
    if sample:
        store.check_images({i: image_sha(c) for i, c in zip(sample, load(sample)[0])})
    stored = set(before)
    todo = [i for i in range(images) if i not in stored]
    shards = shard_ids(todo, workers, shard_images)
    done = [len(before)]
    report = progress or (lambda *a: None)
    report(done[0], images, None)

    def store_shard(ids, result):
        store.add_shard(ids, result["records"], result["summary"])
        done[0] += len(ids)
        report(done[0], images, None)

    crashes = 0
    if shards and not on_ray:
        for ids in shards:
            store_shard(ids, run_shard(setup, model_path, float_model, ids, *load(ids),
                                       on_op=lambda n: report(done[0], images, n)))
    elif shards:
        crashes = _on_ray(setup, model_path, float_model, load, shards, store_shard, workers, ray_address, crash_shard)
    return {"stored_before": len(before), "run": len(todo), "shards": len(shards), "crashes_injected": crashes}


@contextmanager
def ray_session(workers: int, address: str | None = None):
    """Ray, connected: to the cluster at `address`, else to a local instance of `workers` CPUs
    started here (and stopped on exit). Already connected (sw/bench.py), it is used as it is."""
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        # A cluster of this machine only: Ray binds to the loopback interface instead of the
        # machine's address (the variable's name is Ray's, from its macOS/Windows default).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # "local": a new instance, even where `ray start` has left this node's address behind
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def _on_ray(setup, model_path, float_model, load, shards, store_shard, workers, address, crash_shard) -> int:
    """The shards as Ray tasks; the number of worker processes the fault injection killed."""
    import ray
    from ray.exceptions import RayTaskError, WorkerCrashedError

    task = ray.remote(num_cpus=1, max_retries=RETRIES)(run_shard)
    with ray_session(workers, address), tempfile.TemporaryDirectory(prefix="fqvit-faults-") as faults:
        model, float_model = ray.put(model_path.read_bytes()), ray.put(float_model)
        queue, pending = list(enumerate(shards)), {}
        while queue or pending:
            while queue and len(pending) < workers:
                k, ids = queue.pop(0)
                marker = os.path.join(faults, f"shard-{k}") if k == crash_shard else None
                pending[task.remote(setup, model, float_model, ids, *load(ids), marker)] = (k, ids)
            ready, _ = ray.wait(list(pending), num_returns=1)
            k, ids = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayTaskError as err:  # the shard's own error (e.g. a CompileError), not Ray's wrapper
                raise err.cause from None
            except WorkerCrashedError:
                raise RuntimeError(f"shard {k} (images {ids[0]}..{ids[-1]}): its worker process died "
                                   f"{RETRIES + 1} times; the stored shards are kept, rerun to resume") from None
            store_shard(ids, result)
        return len(os.listdir(faults))
