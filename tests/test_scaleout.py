"""Sharded evaluation (sw/shards.py) and its results store (sw/results_store.py): records that
survive, resume without double counting, refuse a folder of another config, per-image comparison;
and end to end, digits on the Verilated top on a local two-worker Ray cluster with a worker killed."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sw.driver import compare_images
from sw.results_store import FILE, ResultsStore, StoreError, image_sha
from sw.run_vit import main as run_vit
from sw.shards import shard_ids

CONFIG = {"model": "abc", "backend": "sim", "layers": 4}


def record(image: int, sha: str = "s", **fields) -> dict:
    return {"image": image, "label": 1, "float_pred": 1, "fakequant_pred": 1, "integer_pred": 1, "backend_pred": 1,
            "bit_exact": True, "mismatches": 0, "elements": 10, "cycles": 5.0, "image_sha": f"{sha}{image}", **fields}


def test_a_store_keeps_whole_shards_and_resumes_from_them(tmp_path):
    with ResultsStore(tmp_path, CONFIG) as store:
        store.add_shard([0, 1], [record(0), record(1)], {"cycles": 10})
        # a shard whose records clash with stored ones (the driver never makes one) leaves nothing behind
        with pytest.raises(sqlite3.IntegrityError):
            store.add_shard([2, 1], [record(2), record(1)], {"cycles": 10})
    with ResultsStore(tmp_path, CONFIG) as store:
        assert store.stored(range(4)) == {0, 1} and store.stored([1, 3]) == {1}
        store.check_images({i: f"s{i}" for i in range(4)})  # the stored ones are the same images
        assert [r["image"] for r in store.records(range(4))] == [0, 1]
        assert [s["images"] for s in store.summaries(range(4))] == [[0, 1]]
        assert store.records([1])[0] == {**record(1), "shard": 1}


def test_a_store_refuses_another_config_a_changed_image_and_a_second_user(tmp_path):
    ResultsStore(tmp_path, CONFIG).close()
    with pytest.raises(StoreError, match=r"different model or configuration \(layers: 4 there, 12 now\)"):
        ResultsStore(tmp_path, {**CONFIG, "layers": 12})
    with ResultsStore(tmp_path, CONFIG) as store:
        store.add_shard([0], [record(0)], {})
        with pytest.raises(StoreError, match="image 0 differs from the image stored under that index"):
            store.check_images({0: "other"})
        with pytest.raises(StoreError, match="another run is using this folder"):
            ResultsStore(tmp_path, CONFIG)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / FILE).write_text("not a database, but long enough to be read as one" * 20)
    with pytest.raises(StoreError, match="is not a results store"):
        ResultsStore(tmp_path / "junk", CONFIG)


def test_shards_split_the_pending_images():
    assert shard_ids(list(range(10)), 2, None) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert shard_ids(list(range(40)), 2, None)[0] == list(range(8))  # at most 8 a shard by default
    assert shard_ids([3, 5, 6], 1, 2) == [[3, 5], [6]]


def test_mismatches_are_counted_per_image():
    ref = {"a": torch.zeros(3, 4, dtype=torch.int64), "b": torch.ones(3, 2)}
    got = {"a": torch.zeros(3, 4, dtype=torch.int64), "c": torch.ones(3, 1)}
    got["a"][1, 2] = 7
    per_image, tensors = compare_images(ref, got, 3)
    # image 1: one element of a; every image: all of b (missing) and of c (not in the reference)
    assert [p["mismatches"] for p in per_image] == [3, 4, 3]
    assert [p["elements"] for p in per_image] == [7, 7, 7]
    assert tensors == {"a": {"elements": 12, "mismatches": 1}, "b": {"elements": 6, "mismatches": 6},
                       "c": {"elements": 3, "mismatches": 3}}
    assert image_sha(torch.zeros(2, dtype=torch.uint8)) != image_sha(torch.ones(2, dtype=torch.uint8))


def test_fault_injection_needs_ray_workers(capsys):
    assert run_vit(["--backend", "ref", "--inject-crash", "0", "--quiet"]) == 2
    assert "--inject-crash kills a Ray worker process" in capsys.readouterr().out


def report(tmp_path, name: str, *argv) -> tuple[int, dict]:
    out = tmp_path / f"{name}.json"
    rc = run_vit([*argv, "--json", str(out), "--quiet"])
    return rc, json.loads(out.read_text()) if out.is_file() else None


@pytest.mark.sim
def test_two_ray_workers_with_a_killed_worker_count_every_image_once(tmp_path):
    """A local two-worker Ray cluster (loopback) runs digits on the Verilated top in shards into a
    results store; the first attempt of shard 1 kills its worker process and Ray retries it. Every
    image is stored exactly once, the predictions are those of a single-process run, and the same
    command again does no new work."""
    store = tmp_path / "results"
    common = ["--backend", "sim", "--array", "4x6", "--images", "10", "--shard-images", "3"]
    rc, ray_run = report(tmp_path, "ray", *common, "--workers", "2", "--results", str(store), "--inject-crash", "1")
    assert rc == 0 and ray_run["bit_exact"] and ray_run["crashes_injected"] == 1
    assert ray_run["shards_run"] == ray_run["shards"] == 4 and ray_run["images_stored_before"] == 0
    with sqlite3.connect(store / FILE) as db:
        images = [row[0] for row in db.execute("SELECT image FROM images ORDER BY image")]
        shards = sorted(i for (ids,) in db.execute("SELECT images FROM shards") for i in json.loads(ids))
    assert images == shards == list(range(10))

    rc, single = report(tmp_path, "single", *common)
    assert rc == 0 and single["workers"] == 1 and single["results"] is None
    assert ray_run["predictions"] == single["predictions"] and len(single["predictions"]) == 10
    assert ray_run["cycles"] == single["cycles"]  # the same shards, so the same batches and cycles

    rc, again = report(tmp_path, "again", *common, "--workers", "2", "--results", str(store))
    assert rc == 0 and again["shards_run"] == 0 and again["images_stored_before"] == 10
    assert again["predictions"] == ray_run["predictions"] and again["cycles"] == ray_run["cycles"]

    rc, _ = report(tmp_path, "perf", *common, "--results", str(store), "--mode", "perf")
    assert rc == 2  # the records are check mode's: the folder refuses a performance-mode run


@pytest.mark.sim
def test_ctrl_c_leaves_whole_shards_and_the_same_command_resumes(tmp_path):
    store = tmp_path / "results"
    argv = [sys.executable, str(Path(__file__).parents[1] / "sw" / "run_vit.py"), "--backend", "sim", "--array", "4x6",
            "--images", "40", "--shard-images", "2", "--results", str(store), "--quiet"]
    # SIGINT as a terminal's Ctrl-C delivers it (a background job of a shell would ignore it)
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if (store / FILE).is_file():
            with sqlite3.connect(store / FILE) as db:
                if db.execute("SELECT COUNT(*) FROM shards").fetchone()[0] >= 1:
                    break
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 130 and "the same command resumes" in " ".join(out.split()), out
    with sqlite3.connect(store / FILE) as db:
        stored = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        shards = db.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
    assert stored == 2 * shards and 0 < stored < 40

    rc, resumed = report(tmp_path, "resumed", *argv[2:-1])
    assert rc == 0 and resumed["bit_exact"] and resumed["images"] == 40
    assert resumed["images_stored_before"] == stored and resumed["shards_run"] == 20 - shards
    with sqlite3.connect(store / FILE) as db:
        assert db.execute("SELECT COUNT(DISTINCT image), COUNT(*) FROM images").fetchone() == (40, 40)


def test_the_report_names_the_images_that_are_not_bit_exact():
    """A shard that is not bit-exact stays in the report: its images by index, the run not bit-exact."""
    from argparse import Namespace

    from sw.run_vit import report_of_records

    args = Namespace(array=(8, 8), model="digits-vit", backend="ref", target="generic", workers=2, ray=None,
                     results=None, clock_mhz=100.0)
    records = [record(0), record(1, bit_exact=False, mismatches=3, backend_pred=2), record(2, float_pred=0)]
    summaries = [{"images": [0, 1], "tensors": {"a": {"elements": 20, "mismatches": 3}}, "cycles": None},
                 {"images": [2], "tensors": {"a": {"elements": 10, "mismatches": 0}}, "cycles": None}]
    r = report_of_records(args, records, summaries, None, 4, 4, False)
    assert not r["bit_exact"] and r["mismatching_images"] == [1] and r["mismatches"] == 3
    assert r["tensors"] == {"a": {"elements": 30, "mismatches": 3}} and r["elements_compared"] == 30
    assert r["predictions"] == [1, 2, 1] and r["top1"]["backend"] == r["top1"]["float"] == pytest.approx(200 / 3)
    assert r["top1"]["fakequant"] == r["top1"]["integer"] == 100.0


@pytest.mark.sim
def test_joining_a_running_cluster(tmp_path):
    """--ray ADDRESS: a cluster started apart (`ray start --head`, on the loopback interface, token
    authentication as Ray 2.59+ sets it up by default) takes the shards; it outlives the run."""
    import os
    import secrets
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    # --block: the head's processes live as long as this one, so the test stops exactly its cluster
    with subprocess.Popen(["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                           "--include-dashboard=false", "--disable-usage-stats"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as head:
        try:
            for line in head.stdout:
                if "Ray runtime started" in line:
                    break
            out = tmp_path / "r.json"
            run = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "sw" / "run_vit.py"), "--backend",
                                  "sim", "--array", "4x6", "--images", "4", "--workers", "2", "--ray",
                                  f"127.0.0.1:{port}", "--json", str(out), "--quiet"],
                                 env=env, capture_output=True, text=True, timeout=600)
            assert head.poll() is None  # the run left the cluster running
        finally:
            head.terminate()
            head.communicate(timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    r = json.loads(out.read_text())
    assert r["bit_exact"] and r["ray"] == f"127.0.0.1:{port}" and r["shards"] == 2 and len(r["predictions"]) == 4


def test_the_workers_estimate_for_imagenet():
    from sw.bench import workers_needed

    (full,) = workers_needed({"m": (0.36, 86.4, "how")}, 1.0)
    assert (full["ref_workers_1h"], full["rtl_workers_24h"]) == (5, 50)  # 50,000 x 0.36 s / 3600 s, x 86.4 / 86400
    (half,) = workers_needed({"m": (0.36, 86.4, "how")}, 0.5)
    assert (half["ref_workers_1h"], half["rtl_workers_24h"]) == (10, 100)
