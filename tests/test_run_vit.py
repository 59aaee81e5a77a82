"""`sw/run_vit.py` without a simulator: the ref backend's report and clear errors for bad runs."""

import json
import subprocess
import sys

import pytest

from sw.run_vit import main as run_vit


def test_ref_backend_report(tmp_path):
    out = tmp_path / "r.json"
    assert run_vit(["--backend", "ref", "--images", "2", "--json", str(out), "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert r["backend"] == "ref" and r["bit_exact"] and r["mismatches"] == 0 and r["images"] == 2
    assert r["cycles"] is None and r["images_per_s"] is None  # the reference has no clock
    assert r["top1"]["backend"] == r["top1"]["integer"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "nonexistent_vit"], "unknown model"),
    (["--model", "deit_tiny_patch16_224", "--checkpoint", "/nonexistent.pth", "--synthetic"], "does not exist"),
    (["--array", "32x32", "--act-kib", "1"], "does not fit the activation buffer"),
    (["--layers", "9"], "--layers must be in 1..4"),
])
def test_misconfigured_runs_fail_clearly(argv, message, capsys):
    assert run_vit(["--backend", "sim", "--images", "1", "--quiet", *argv]) == 2
    out = capsys.readouterr().out
    assert "error:" in out and message in out and "Traceback" not in out


@pytest.mark.parametrize("argv, message", [
    (["--array", "8"], "--array must be RxC"),
    (["--array", "0x8"], "--array rows must be in 1..32"),
    (["--images", "0"], "--images must be a positive integer"),
])
def test_bad_arguments_are_refused(argv, message):
    proc = subprocess.run([sys.executable, "sw/run_vit.py", *argv], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_compiler_is_reported(monkeypatch, capsys):
    import sim.toolchain
    real = sim.toolchain.shutil.which
    monkeypatch.setattr(sim.toolchain.shutil, "which", lambda tool: None if tool == "c++" else real(tool))
    assert run_vit(["--backend", "sim", "--images", "1", "--quiet"]) == 2
    out = capsys.readouterr().out
    assert "error:" in out and "C++ compiler" in out
