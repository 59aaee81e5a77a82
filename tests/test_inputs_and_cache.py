"""What a user meets at the edges: unreadable inputs get a clear error, the per-user cache and its
CLI, and pytest without its plugins (issue 12)."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from calib import export
from calib.__main__ import main as calib_main
from calib.config import QuantConfig
from calib.data import DataError, imagefolder_data, synthetic_data
from calib.models import ModelError, load_checkpoint
from calib.pipeline import calibrate, quantize_model
from calib.vit import export as export_vit
from fqvit import cache
from sw import cache as cache_cli

ROOT = Path(__file__).resolve().parent.parent


def tiny_vit(qkv_bias=True):
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=2, embed_dim=32, depth=2,
                             num_heads=2, mlp_ratio=2, qkv_bias=qkv_bias).eval()


# --- inputs -------------------------------------------------------------------------------------

def test_a_corrupt_image_is_a_data_error_naming_it(tmp_path, make_imagefolder):
    root = make_imagefolder(tmp_path / "images")
    bad = root / "val" / "cat" / "0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = imagefolder_data(root, tiny_vit(), calib_images=2, calib_batch=2, batch_size=2)
    with pytest.raises(DataError, match=f"cannot read the image {bad}.*expected every file"):
        next(iter(data.test))


def test_a_corrupt_image_exits_2_through_the_cli(tmp_path, make_imagefolder, capsys):
    root = make_imagefolder(tmp_path / "images")
    bad = root / "val" / "cat" / "0.png"
    bad.write_bytes(b"garbage")
    rc = calib_main(["--model", "deit_tiny_patch16_224", "--data", str(root), "--calib-images", "2",
                     "--calib-batch", "2", "--images", "2", "--ptf", "--lis", "--export", str(tmp_path / "m.fqvit.safetensors"),
                     "--quiet"])
    out = capsys.readouterr().out
    assert rc == 2 and "error:" in out and "Traceback" not in out
    assert "0.png" in out.replace("\n", "")  # rich may wrap the long path


def test_a_checkpoint_that_is_not_a_torch_file_says_what_is_expected(tmp_path):
    model = tiny_vit()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pth is not a file written by torch.save; expected a PyTorch "
                                         "state dict saved with torch.save") as info:
        load_checkpoint(model, junk)
    assert "weights_only" not in str(info.value)  # torch's advice to run the file's pickled code
    torch.save(tiny_vit(), tmp_path / "whole.pth")  # a pickled module, not its state dict
    with pytest.raises(ModelError, match="whole.pth holds Python objects besides tensors") as info:
        load_checkpoint(model, tmp_path / "whole.pth")
    assert "weights_only" not in str(info.value)
    with pytest.raises(ModelError, match="nope.pth does not exist; expected a PyTorch state dict"):
        load_checkpoint(model, tmp_path / "nope.pth")
    with pytest.raises(ModelError, match="is not a file; expected a PyTorch state dict"):
        load_checkpoint(model, tmp_path)


def test_a_bad_checkpoint_exits_2_through_the_cli(tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert calib_main(["--model", "deit_tiny_patch16_224", "--checkpoint", str(junk), "--synthetic", "--quiet"]) == 2
    out = capsys.readouterr().out.replace("\n", "")
    assert "torch.save" in out and "weights_only" not in out and "Traceback" not in out


@pytest.fixture(scope="module")
def ptf_export(tmp_path_factory):
    """A tiny ViT quantized with PTF, exported: (IntModel, its file)."""
    model = tiny_vit()
    path = tmp_path_factory.mktemp("export") / "m.fqvit.safetensors"
    sim = calibrate(model, QuantConfig(ptf=True, lis=True), synthetic_data(model, 4, 2, 2), progress=False)
    return quantize_model(model, sim, "tiny", path), path


def test_an_integer_model_missing_a_tensor_does_not_load(ptf_export, tmp_path):
    im, _ = ptf_export
    assert "alpha.resid.1" in im.tensors
    without = export.IntModel(im.arch, im.model, im.config, im.quant, im.input, im.ints,
                              {k: v for k, v in im.tensors.items() if k not in ("alpha.resid.1", "blocks.0.mlp.fc1.b")})
    export.save(without, tmp_path / "missing.fqvit.safetensors")  # a consistent file (checksum) that lacks them
    with pytest.raises(export.ExportError, match="2 missing tensors: alpha.resid.1, blocks.0.mlp.fc1.b"):
        export.load(tmp_path / "missing.fqvit.safetensors")


def test_an_integer_model_with_an_unexpected_tensor_does_not_load(ptf_export, tmp_path):
    im, _ = ptf_export
    extra = export.IntModel(im.arch, im.model, im.config, im.quant, im.input, im.ints,
                            {**im.tensors, "blocks.7.norm1.G": torch.zeros(3, dtype=torch.int32)})
    export.save(extra, tmp_path / "extra.fqvit.safetensors")
    with pytest.raises(export.ExportError, match="1 unexpected tensors: blocks.7.norm1.G"):
        export.load(tmp_path / "extra.fqvit.safetensors")


def test_a_layer_without_bias_exports_a_zero_bias_and_loads(tmp_path):
    model = tiny_vit(qkv_bias=False)
    sim = calibrate(model, QuantConfig(), synthetic_data(model, 4, 2, 2), progress=False)
    im = quantize_model(model, sim, "tiny", tmp_path / "m.fqvit.safetensors")
    assert model.blocks[0].attn.qkv.bias is None and not im.tensors["blocks.0.attn.qkv.b"].any()
    assert export_vit(model, sim, "tiny").tensors.keys() == im.tensors.keys()


# --- the cache ----------------------------------------------------------------------------------

def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "fqvit-accel"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "fqvit-accel"
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "env"))
    assert cache.part("sim") == tmp_path / "env" / "sim"
    monkeypatch.chdir(tmp_path)
    assert cache.set_root("rel") == tmp_path / "rel"  # absolute, so child processes in other folders agree
    assert os.environ[cache.ENV_VAR] == str(tmp_path / "rel")
    with pytest.raises(ValueError, match="unknown cache part 'build'"):
        cache.part("build")


# Each CLI that takes --cache-dir: (module, its parser function or None for `main(["--help"])`).
CLIS = {"python -m calib": ("calib.__main__", "parser"), "sw/run_vit.py": ("sw.run_vit", "parser"),
        "python -m calib.results": ("calib.results", None), "python -m sw.bench": ("sw.bench", None),
        "python -m sw.run_matmul": ("sw.run_matmul", None), "python -m sw.cache": ("sw.cache", None),
        "python -m rtl_gen": ("rtl_gen.__main__", None)}


@pytest.mark.parametrize("name", CLIS)
def test_every_cli_help_says_where_the_cache_is(name, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "the-cache"))
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside the path
    module_name, parser_name = CLIS[name]
    module = importlib.import_module(module_name)
    if parser_name:
        text = getattr(module, parser_name)().format_help()
    else:
        with pytest.raises(SystemExit) as done:
            module.main(["--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
    assert "--cache-dir DIR" in text and f"now {tmp_path / 'the-cache'}" in text
    assert "$FQVIT_CACHE_DIR" in text and "~/.cache/fqvit-accel" in text


def test_cache_dir_flag_sets_the_root_and_refuses_a_file(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "env"))  # also restores the variable main sets
    assert cache_cli.main(["--cache-dir", str(tmp_path / "flag")]) == 0  # the flag wins over the variable
    assert cache.cache_root() == tmp_path / "flag"
    assert str(tmp_path / "flag") in capsys.readouterr().out.replace("\n", "")
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as done:
        cache_cli.main(["--cache-dir", str(tmp_path / "file")])
    assert done.value.code == 2 and "exists and is not a folder" in capsys.readouterr().err


def fill(root: Path) -> None:
    for rel, size in (("models/digits-vit-abc.pt", 1500), ("exports/m.fqvit.safetensors", 2500),
                      ("vectors/digits.trace.pt", 500), ("sim/top-1234/top", 3_000_000), ("sim/top-1234/top.v", 10),
                      ("sim/systolic_8x8-99/systolic_8x8", 2_000_000)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\0" * size)
    (root / "sim" / "top-1234.lock").write_text("")


def test_sw_cache_shows_each_part_and_each_build(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    fill(tmp_path)
    rows = {label: n for label, _, n in cache_cli.entries()}
    assert rows == {"models": 1500, "exports": 2500, "vectors": 500, "sim/systolic_8x8-99": 2_000_000,
                    "sim/top-1234": 3_000_010, "rtl": 0}


def test_sw_cache_clears_one_part_or_all(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    fill(tmp_path / "cache")
    (tmp_path / "cache" / "not-ours.txt").write_text("a user's file beside the parts")
    assert cache_cli.main(["--clear", "sim"]) == 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["exports", "models", "not-ours.txt", "vectors"]
    assert cache_cli.main(["--clear"]) == 0
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["not-ours.txt"]


def test_sw_cache_does_not_import_torch(tmp_path):
    fill(tmp_path)
    code = "import sys; from sw.cache import main; main([]); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, cache.ENV_VAR: str(tmp_path), "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False"
    assert f"cache {tmp_path}" in proc.stdout and "sim/top-1234" in proc.stdout and "3.0 MB" in proc.stdout


# --- pytest itself ------------------------------------------------------------------------------

def test_pytest_without_the_timeout_plugin_says_to_install_the_test_extras():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:timeout", "-p", "no:cacheprovider", "--co", "-q",
                           __file__], capture_output=True, text=True, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert 'pip install -e ".[test]"' in out and "INTERNALERROR" not in out
