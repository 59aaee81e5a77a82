"""End to end: `sw/run_vit.py` runs quantized ViTs through the Verilated accelerator top, and every
intermediate tensor equals the integer reference."""

import json

import pytest
import torch

from calib import export
from calib.data import digits_data
from calib.intref import vit as int_vit
from calib.models import create_model
from sw.run_vit import main as run_vit

pytestmark = pytest.mark.sim


def report_of(tmp_path, *argv) -> dict:
    out = tmp_path / "report.json"
    rc = run_vit([*argv, "--json", str(out), "--quiet"])
    report = json.loads(out.read_text())
    assert rc == 0 and report["bit_exact"] and report["mismatches"] == 0, report
    return report


def array_macs(config: dict, layers: int) -> dict:
    """Multiply-accumulates per image on the array, from the model's dimensions: the linear layers
    (patch embedding, each block's qkv, proj, fc1, fc2, and the head on the class token when the run
    is whole) and the attention logits Q.K^T (heads x head_dim = embed_dim). The attention op also
    counts attention x V's as many again, done beside the array."""
    t, d, hidden = config["tokens"], config["embed_dim"], config["mlp_hidden"]
    patch = config["in_chans"] * config["patch_size"][0] * config["patch_size"][1]
    head = d * config["num_classes"] if layers == config["depth"] else 0
    return {"linear": (t - 1) * patch * d + layers * t * d * (3 * d + d + 2 * hidden) + head,
            "attention": layers * t * t * d}


def check_cycles(r: dict, config: dict) -> None:
    """The cycles against the array's ideal: R x C multiply-accumulates a cycle at most, on MAC
    counts taken from the model's dimensions (not from the compiler's accounting)."""
    rows, cols = (int(n) for n in r["array"].split("x"))
    per_image = array_macs(config, r["layers"])
    assert r["macs"] == r["images"] * (sum(per_image.values()) + per_image["attention"])
    for kind, macs in per_image.items():
        assert r["cycles"]["by_op"][kind] >= r["images"] * macs / (rows * cols), kind
    assert r["cycles"]["total"] == sum(r["cycles"]["by_op"].values())
    assert r["mac_utilization"] == pytest.approx(r["macs"] / (r["cycles"]["total"] * rows * cols))


@pytest.mark.parametrize("array, jitter", [("8x8", []), ("4x6", ["--host-jitter"])], ids=["8x8", "4x6-jitter"])
def test_digits_model_bit_exact_on_the_top(array, jitter, tmp_path):
    """The embedded model on two arrays; on 4x6 the host offers data and takes results at random
    (sim/host.py), so every op runs with gaps on its inputs and back-pressure on its results."""
    r = report_of(tmp_path, "--backend", "sim", "--array", array, "--images", "3", *jitter)
    assert r["array"] == array and r["images"] == 3 and r["layers"] == r["depth"] == 4
    assert r["tensors_compared"] == 2 + 4 * 12 + 2 and r["elements_compared"] > 100_000
    assert set(r["cycles"]["by_op"]) == {"linear", "attention", "layernorm", "add"}
    assert 0 < r["mac_utilization"] < 1 and r["images_per_s"] > 0 and r["clock_mhz"] == 100
    # the accelerator's classes against the integer model file, run here on the same test images
    im = export.load(r["export"])
    x, labels = next(iter(digits_data(images=3, batch_size=3).test))
    predictions = int_vit.forward(im, im.quantize_input(x)).argmax(-1)
    assert r["predictions"] == predictions.tolist()
    assert r["top1"]["backend"] == r["top1"]["integer"] == pytest.approx(100.0 * float((predictions == labels).float().mean()))
    check_cycles(r, im.config)


def test_digits_model_bit_exact_on_the_top_lowered_to_ecp5_primitives(tmp_path):
    """The Verilog synthesis reads (the multipliers as MULT18X18D, the buffers as DP16KD blocks
    with registered inputs, bank selects and output registers) on the primitives' models: the same
    outputs and the same cycles as the generic RTL (each unit's latency is the same in both forms).
    The generic build gates idle units' clocks (sw/driver.build_sim), the ecp5 build does not: the
    gates change nothing either."""
    lowered = report_of(tmp_path, "--backend", "sim", "--array", "4x6", "--images", "1", "--target", "ecp5")
    generic = report_of(tmp_path, "--backend", "sim", "--array", "4x6", "--images", "1")
    assert lowered["target"] == "ecp5" and generic["target"] == "generic"
    assert lowered["predictions"] == generic["predictions"] and lowered["cycles"] == generic["cycles"]



def test_performance_mode_compares_the_output_and_runs_no_read_backs(tmp_path):
    """--mode perf: the attention chain's intermediates stay on chip (no check programs), the
    final output is compared, and the model's cycles are those of check mode."""
    check = report_of(tmp_path, "--backend", "sim", "--array", "4x6", "--images", "1")
    perf = report_of(tmp_path, "--backend", "sim", "--array", "4x6", "--images", "1", "--mode", "perf")
    assert check["mode"] == "check" and check["cycles"]["check"] > 0
    assert perf["mode"] == "perf" and perf["cycles"]["check"] == 0 and perf["tensors_compared"] == 1
    assert perf["predictions"] == check["predictions"]
    assert perf["cycles"]["by_op"] == check["cycles"]["by_op"]
    # the host link: the patches in (K codes each, one image), the class logits out (one epilogue
    # row of C int32 lanes and C GELU codes, 10 classes on 6 lanes: 2 rows), the check mode's
    # read-backs apart; LayerNorm and the residual adds still cross it (no scratchpad yet)
    link, c = perf["host_link_bytes"], export.load(perf["export"]).config
    patches, k = c["tokens"] - 1, c["in_chans"] * c["patch_size"][0] * c["patch_size"][1]
    assert link["input"] == patches * k and link["output"] == 2 * (6 * 4 + 6 + 1)
    assert link["weights"] > 0 and link["program"] > 0 and link["activations"] > 0
    assert perf["host_link_bytes_check"] == 0 < check["host_link_bytes_check"]
    assert check["host_link_bytes"] == link


def test_a_corrupted_backend_is_reported_as_mismatching(tmp_path, monkeypatch, capsys):
    """One element off in one image's intermediate: the run is not bit-exact, and the report names
    the tensor and the image."""
    from sw import driver

    real = driver.run_sim

    def one_element_off(*args, **kwargs):
        run = real(*args, **kwargs)
        run.trace["blocks.1.attn.softmax"] = run.trace["blocks.1.attn.softmax"].clone()
        run.trace["blocks.1.attn.softmax"][1].view(-1)[7] ^= 1
        return run

    monkeypatch.setattr(driver, "run_sim", one_element_off)
    out = tmp_path / "report.json"
    assert run_vit(["--backend", "sim", "--array", "4x6", "--images", "2", "--json", str(out), "--quiet"]) == 1
    r = json.loads(out.read_text())
    assert not r["bit_exact"] and r["mismatches"] == 1 and r["mismatching_images"] == [1]
    printed = " ".join(capsys.readouterr().out.split())
    assert "mismatch blocks.1.attn.softmax: 1 of" in printed and "images not bit-exact: [1]" in printed


def test_deit_tiny_block_from_checkpoint_and_imagefolder(tmp_path, make_imagefolder):
    """A (random-init) DeiT-Tiny checkpoint and a small ImageFolder the test makes: the first block
    through the top, bit-exact."""
    root = make_imagefolder(tmp_path / "imagenet", per_class=1)
    torch.save(create_model("deit_tiny_patch16_224").state_dict(), tmp_path / "deit.pth")
    r = report_of(tmp_path, "--backend", "sim", "--model", "deit_tiny_patch16_224", "--checkpoint",
                  str(tmp_path / "deit.pth"), "--data", str(root), "--images", "1", "--layers", "1")
    assert r["layers"] == 1 and r["depth"] == 12 and r["top1"]["backend"] is None and r["predictions"] is None
    assert r["tensors_compared"] == 2 + 12 and r["cycles"]["by_op"]["linear"] > 1_000_000
    check_cycles(r, export.load(r["export"]).config)
