"""End to end: `sw/run_vit.py` runs quantized ViTs through the Verilated accelerator top, and every
intermediate tensor equals the integer reference."""

import json

import pytest
import torch

from calib.models import create_model
from sw.run_vit import main as run_vit

pytestmark = pytest.mark.sim


def report_of(tmp_path, *argv) -> dict:
    out = tmp_path / "report.json"
    rc = run_vit([*argv, "--json", str(out), "--quiet"])
    report = json.loads(out.read_text())
    assert rc == 0 and report["bit_exact"] and report["mismatches"] == 0, report
    return report


@pytest.mark.parametrize("array", ["8x8", "4x6"])
def test_digits_model_bit_exact_on_the_top(array, tmp_path):
    r = report_of(tmp_path, "--backend", "sim", "--array", array, "--images", "3")
    assert r["array"] == array and r["images"] == 3 and r["layers"] == r["depth"] == 4
    assert r["tensors_compared"] == 2 + 4 * 12 + 2 and r["elements_compared"] > 100_000
    assert set(r["cycles"]["by_op"]) == {"linear", "logits", "softmax", "attn_v", "layernorm", "add"}
    assert r["cycles"]["total"] == sum(r["cycles"]["by_op"].values()) == 3 * r["cycles"]["per_image"]
    assert 0 < r["mac_utilization"] < 1 and r["images_per_s"] > 0 and r["clock_mhz"] == 100
    assert r["top1"]["backend"] is not None and set(r["top1"]) == {"float", "fakequant", "integer", "backend"}
    for key in ("model", "backend", "wall_s"):
        assert key in r


def test_deit_tiny_block_from_checkpoint_and_imagefolder(tmp_path, make_imagefolder):
    """A (random-init) DeiT-Tiny checkpoint and a small ImageFolder the test makes: the first block
    through the top, bit-exact."""
    root = make_imagefolder(tmp_path / "imagenet", per_class=1)
    torch.save(create_model("deit_tiny_patch16_224").state_dict(), tmp_path / "deit.pth")
    r = report_of(tmp_path, "--backend", "sim", "--model", "deit_tiny_patch16_224", "--checkpoint",
                  str(tmp_path / "deit.pth"), "--data", str(root), "--images", "1", "--layers", "1")
    assert r["layers"] == 1 and r["depth"] == 12 and r["top1"]["backend"] is None
    assert r["tensors_compared"] == 2 + 12 and r["cycles"]["by_op"]["linear"] > 1_000_000
