"""calib: quantization pipeline, integer-only reference (no float op), export format, errors."""

import json

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from calib import export as export_mod
from calib.__main__ import main as calib_main
from calib.config import QuantConfig
from calib.data import DataError, imagefolder_data, synthetic_data
from calib.models import ModelError, create_model, family_of, load_checkpoint
from calib.observers import PTFObserver, make_observer
from calib.pipeline import calibrate, evaluate, integer_forward, quantize_model
from calib.quantizer import quantize_weight


class NoFloat(TorchDispatchMode):
    """Fails on any aten op that reads or writes a floating-point tensor."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor) and (t.dtype.is_floating_point or t.dtype.is_complex):
                raise AssertionError(f"float tensor ({t.dtype}) in {func} inside the integer reference")
        self.ops += 1
        return out


def tiny_vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2,
                             num_heads=2, mlp_ratio=2, qkv_bias=True).eval()


def tiny_swin():
    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=2, in_chans=3, num_classes=5, window_size=4, embed_dim=16,
                           depths=(2, 2), num_heads=(2, 4)).eval()


def quantized(model, cfg, tmp_path, images=6):
    data = synthetic_data(model, calib_images=8, images=images, batch_size=4)
    sim = calibrate(model, cfg, data, progress=False)
    im = quantize_model(model, sim, "tiny", tmp_path / "m.fqvit.safetensors")
    return data, sim, im


CONFIGS = [QuantConfig(), QuantConfig(lis=False), QuantConfig(observer="omse", lis_rule="nearest"),
           QuantConfig(observer="percentile", ptf=False), QuantConfig(observer="ema", official=True)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.observer}-{c.bits}-{c.lis_rule}-ptf{c.ptf}-off{c.official}")
@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
def test_integer_reference_is_integer_only_and_tracks_fakequant(build, cfg, tmp_path):
    model = build()
    data, sim, im = quantized(model, cfg, tmp_path)
    x, _ = next(iter(data.test))
    codes = im.quantize_input(x)
    trace = {}
    with NoFloat() as mode:
        logits = integer_forward(im, codes, trace)
    assert mode.ops > 100 and logits.dtype == torch.int32
    # Fake-quant and integer-only agree point by point up to rounding, which drifts by a code or so
    # through the layers (each side runs on its own upstream values). The official forward differs
    # more (float GELU input, float adds, its own LayerNorm and exp) and still stays within it.
    sim.capture = {}
    family_of(model).forward(model, x, sim)
    compared = 0
    for name, fq in sim.capture.items():
        if name in trace and not (cfg.official and name == "logits"):  # official: uint8 codes, ours int32
            diff = (trace[name].long().reshape(fq.shape) - fq).abs().float()
            assert diff.mean() < 1.0, f"{name}: mean difference {float(diff.mean()):.3f} codes"
            compared += 1
    assert compared > 20


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_real_architectures_run_integer_only(name, tmp_path):
    model = create_model(name)
    data = synthetic_data(model, calib_images=4, images=1, batch_size=2)
    sim = calibrate(model, QuantConfig(), data, progress=False)
    im = quantize_model(model, sim, name, tmp_path / "m.fqvit.safetensors")
    x, _ = next(iter(data.test))
    codes = im.quantize_input(x)  # the one float step, outside the check
    with NoFloat():
        logits = integer_forward(im, codes)
    assert logits.shape == (1, 1000)


def test_export_round_trip_and_bad_files(tmp_path):
    model = tiny_vit()
    data, sim, im = quantized(model, QuantConfig(), tmp_path)
    x, _ = next(iter(data.test))
    fresh = family_of(model).export(model, sim, "tiny")
    assert torch.equal(integer_forward(fresh, fresh.quantize_input(x)), integer_forward(im, im.quantize_input(x)))
    path = tmp_path / "m.fqvit.safetensors"
    blob = path.read_bytes()
    with pytest.raises(export_mod.ExportError, match="does not exist"):
        export_mod.load(tmp_path / "missing.fqvit.safetensors")
    (tmp_path / "trunc.st").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(export_mod.ExportError, match="truncated or corrupt"):
        export_mod.load(tmp_path / "trunc.st")
    flipped = bytearray(blob)
    flipped[-10] ^= 0xFF
    (tmp_path / "flip.st").write_bytes(bytes(flipped))
    with pytest.raises(export_mod.ExportError, match="checksum"):
        export_mod.load(tmp_path / "flip.st")
    im.tensors = {k: v.clone() for k, v in im.tensors.items()}
    old = export_mod.VERSION
    try:
        export_mod.VERSION = old + 1
        export_mod.save(im, tmp_path / "future.st")
    finally:
        export_mod.VERSION = old
    with pytest.raises(export_mod.ExportError, match="version"):
        export_mod.load(tmp_path / "future.st")
    assert export_mod.load(path).lis_rule == QuantConfig().lis_rule  # stored by name, read back
    im.quant = {**im.quant, "lis_rule": "round"}
    export_mod.save(im, tmp_path / "unknown_rule.st")
    with pytest.raises(export_mod.ExportError, match="LIS rule 'round', which this code does not know"):
        export_mod.load(tmp_path / "unknown_rule.st")
    im.quant = {**im.quant, "lis_rule": "fqvit"}  # a known rule, but the layers hold nearest's thresholds
    export_mod.save(im, tmp_path / "mixed_rule.st")
    with pytest.raises(export_mod.ExportError, match="LIS thresholds 4/3, but the file's LIS rule 'fqvit' is 3/2"):
        export_mod.load(tmp_path / "mixed_rule.st")


def test_observers_and_ptf():
    x = torch.randn(4, 10, 8)
    x[..., 3] *= 20  # one outlier channel, as in real LayerNorm inputs
    obs = PTFObserver()
    obs.update(x, last=True)
    qp = obs.qparams()
    assert int(qp.alpha[3]) == 3 and int(qp.alpha.max()) == 3 and int(qp.alpha.min()) == 0
    for kind in ("minmax", "ema", "percentile", "omse"):
        o = make_observer(kind)
        for i in range(3):
            o.update(x, last=i == 2)
        qp = o.qparams()
        assert 0 <= qp.zero <= 255 and float(qp.scale) > 0
    mm = make_observer("minmax")
    mm.update(torch.tensor([0.5, 2.0]))
    assert mm.qparams().zero == 0 and mm.qparams(include_zero=False).zero == 0
    assert abs(float(mm.qparams().scale) - 2.0 / 255) < 1e-9  # range widened to contain 0
    with pytest.raises(RuntimeError, match="calibration"):
        make_observer("minmax").qparams()


def test_weight_quantization_official_quirk():
    w = torch.tensor([[1.0, -1.0, 0.5]])
    assert quantize_weight(w).codes.tolist() == [[127, -127, 64]]
    assert quantize_weight(w, official=True).codes.tolist() == [[127, -127, 64]]  # 128 clipped to 127
    assert abs(float(quantize_weight(w, official=True).scale) - 1 / 127.5) < 1e-9


def test_config_validation():
    with pytest.raises(ValueError, match="observer"):
        QuantConfig(observer="kl")
    with pytest.raises(ValueError, match="lis_rule"):
        QuantConfig(lis_rule="round")
    with pytest.raises(ValueError, match="bool"):
        QuantConfig(ptf=1)


def test_model_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        create_model("resnet_imaginary")
    with pytest.raises(ModelError, match="not supported"):
        create_model("resnet18")
    with pytest.raises(ModelError, match="not supported"):
        create_model("deit_tiny_distilled_patch16_224")
    model = tiny_vit()
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(model, tmp_path / "nope.pth")
    torch.save({"model": tiny_vit().state_dict()}, tmp_path / "wrapped.pth")
    load_checkpoint(model, tmp_path / "wrapped.pth")  # DeiT release format: {"model": state_dict}
    state = tiny_vit().state_dict()
    state.pop("head.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="missing keys.*head.weight.*unexpected keys.*extra.weight"):
        load_checkpoint(model, tmp_path / "bad.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="is not a file written by torch.save"):
        load_checkpoint(model, tmp_path / "junk.pth")


def test_imagefolder_path_and_cli(tmp_path, capsys, make_imagefolder):
    root = make_imagefolder(tmp_path / "imagenet")
    model = tiny_vit()
    data = imagefolder_data(root, model, calib_images=4, calib_batch=2, batch_size=2)
    assert len(data.calib.dataset) == 4 and len(data.test.dataset) == 6
    x, y = next(iter(data.calib))
    assert x.shape == (2, 3, 16, 16)  # timm's eval transform resized the 40x48 images
    with pytest.raises(DataError, match="train/"):
        imagefolder_data(tmp_path, model)
    torch.save(create_model("deit_tiny_patch16_224").state_dict(), tmp_path / "deit.pth")
    out = tmp_path / "r.json"
    rc = calib_main(["--model", "deit_tiny_patch16_224", "--checkpoint", str(tmp_path / "deit.pth"), "--data",
                     str(root), "--calib-images", "2", "--calib-batch", "2", "--images", "2", "--ptf", "--lis",
                     "--export", str(tmp_path / "d.fqvit.safetensors"), "--json", str(out), "--quiet"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["images"] == 2 and result["ptf"] and result["lis"] and set(result["top1"]) == {"float", "fakequant", "integer"}
    assert "integer_vs_fakequant" in result["agreement"] and (tmp_path / "d.fqvit.safetensors").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--model", "nonexistent_vit"], "unknown model"),
    (["--model", "deit_tiny_patch16_224"], "needs --data"),
    (["--model", "deit_tiny_patch16_224", "--checkpoint", "/nonexistent.pth", "--synthetic"], "does not exist"),
    (["--model", "deit_tiny_patch16_224", "--data", "/nonexistent"], "ImageFolder"),
])
def test_cli_errors_are_clear(argv, message, capsys):
    assert calib_main(argv + ["--quiet"]) == 2
    out = capsys.readouterr().out
    assert "error:" in out and message in out and "Traceback" not in out


def test_evaluate_counts(tmp_path):
    """Every count of `evaluate` against predictions made here, one model at a time."""
    model = tiny_vit()
    data, sim, im = quantized(model, QuantConfig(), tmp_path, images=6)
    ev = evaluate(model, sim, im, data, progress=False)
    preds, labels = {"integer": [], "float": [], "fakequant": []}, []
    with torch.no_grad():
        for x, y in data.test:  # the same batches: float results may depend on the batch size
            labels.append(y)
            preds["integer"].append(integer_forward(im, im.quantize_input(x)).argmax(-1))
            for kind, mode in (("float", "float"), ("fakequant", "quant")):
                sim.set_mode(mode)
                preds[kind].append(family_of(model).forward(model, x, sim).argmax(-1))
    y = torch.cat(labels)
    preds = {kind: torch.cat(p) for kind, p in preds.items()}
    assert ev.images == len(y) == 6
    assert ev.correct == {kind: int((p == y).sum()) for kind, p in preds.items()}
    assert ev.agree_int_fq == int((preds["integer"] == preds["fakequant"]).sum())
    assert ev.agree_fq_float == int((preds["fakequant"] == preds["float"]).sum())
