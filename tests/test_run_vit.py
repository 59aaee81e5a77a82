"""`sw/run_vit.py` without a simulator: the ref backend's report checked against an integer run of
its own, a corrupted backend reported as such, Swin on the ref backend (and refused on the
accelerator before anything is done), and clear errors for bad runs."""

import json
import subprocess
import sys

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer

import calib.pipeline
from calib import export
from calib.data import digits_data, synthetic_data
from calib.intref import swin as int_swin
from calib.intref import vit as int_vit
from sw import driver
from sw.run_vit import main as run_vit


def report_of(tmp_path, *argv) -> tuple[int, dict]:
    out = tmp_path / "r.json"
    rc = run_vit([*argv, "--json", str(out), "--quiet"])
    return rc, json.loads(out.read_text())


def test_ref_backend_report_matches_the_integer_model_file(tmp_path):
    """The report's predictions and top-1 against the exported file run here on the digits test
    images: a path that shares neither run_vit's data handling nor the driver."""
    rc, r = report_of(tmp_path, "--backend", "ref", "--images", "12")
    assert rc == 0 and r["backend"] == "ref" and r["bit_exact"] and r["mismatches"] == 0 and r["images"] == 12
    assert r["cycles"] is None and r["images_per_s"] is None  # the reference has no clock
    im = export.load(r["export"])
    x, labels = next(iter(digits_data(images=12, batch_size=12).test))
    predictions = int_vit.forward(im, im.quantize_input(x)).argmax(-1)
    assert r["predictions"] == predictions.tolist()
    top1 = 100.0 * float((predictions == labels).float().mean())
    assert r["top1"]["backend"] == pytest.approx(top1) and r["top1"]["integer"] == pytest.approx(top1)


def tiny_swin():
    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=2, in_chans=3, num_classes=5, window_size=4, embed_dim=16,
                           depths=(2, 2), num_heads=(2, 4)).eval()


def test_swin_runs_on_the_ref_backend(tmp_path, monkeypatch):
    """The whole Swin path of run_vit (its blocks, the reference, the report). A small Swin stands in
    for swin_tiny_patch4_window7_224, whose 224 px integer forward takes minutes on two cores;
    tests/test_calib.py runs that architecture's integer forward."""
    monkeypatch.setattr(calib.pipeline, "create_model", lambda name, checkpoint=None, progress=True: tiny_swin())
    rc, r = report_of(tmp_path, "--model", "swin_tiny_patch4_window7_224", "--backend", "ref", "--synthetic",
                      "--images", "1")
    assert rc == 0 and r["bit_exact"] and r["tensors_compared"] > 50
    assert r["layers"] == r["depth"] == 4 and r["array"] is None and r["top"] is None
    im = export.load(r["export"])
    assert im.arch == "swin"
    x, labels = next(iter(synthetic_data(tiny_swin(), calib_images=8, images=1, batch_size=1).test))
    predictions = int_swin.forward(im, im.quantize_input(x)).argmax(-1)
    assert r["predictions"] == predictions.tolist()
    assert r["top1"]["backend"] == r["top1"]["integer"] == 100.0 * float((predictions == labels).float().mean())


@pytest.mark.parametrize("argv, message", [
    (["--backend", "sim"], "the accelerator does not run Swin"),
    (["--backend", "ref", "--layers", "1"], "runs whole"),
])
def test_swin_runs_the_accelerator_cannot_do_are_refused_before_calibrating(argv, message, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("calibrated a run that should have been refused")

    monkeypatch.setattr(calib.pipeline, "quantize", never)
    assert run_vit(["--model", "swin_tiny_patch4_window7_224", "--synthetic", "--quiet", *argv]) == 2
    out = capsys.readouterr().out.replace("\n", "")
    assert "error:" in out and message in out and "Traceback" not in out


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


def test_a_verilog_target_without_the_sim_backend_is_refused_before_calibrating(monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("calibrated a run that should have been refused")

    monkeypatch.setattr(calib.pipeline, "quantize", never)
    assert run_vit(["--backend", "ref", "--target", "ecp5", "--quiet"]) == 2
    out = capsys.readouterr().out.replace("\n", "")
    assert "error:" in out and "--target ecp5 chooses the Verilog the sim backend builds" in out


def test_every_generation_target_has_its_primitive_models():
    """run_vit's --target choices are sim.toolchain.PRIMITIVE_MODELS' keys (torch- and Amaranth-free)."""
    from rtl_gen import TARGETS
    from sim import toolchain

    assert set(toolchain.PRIMITIVE_MODELS) == set(TARGETS)
    assert "module DP16KD" in toolchain.primitive_models("ecp5") and toolchain.primitive_models("generic") == ""


@pytest.mark.parametrize("argv, message", [
    (["--array", "8"], "--array: array must be RxC"),
    (["--array", "0x8"], "--array: array rows must be in 1..32, got 0"),
    (["--images", "0"], "--images: must be an integer >= 1, got 0"),
    (["--clock-mhz", "-5"], "--clock-mhz: must be a number > 0, got -5.0"),
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
