"""calib.digits: the fixed split, config validation and hashing, and the weight cache.

The default model's accuracy is checked elsewhere; training it here would take a minute, so the
cache tests train a one-epoch toy config.
"""

import dataclasses
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from calib import digits
from calib.digits import DigitsConfig, config_hash, digits_splits, evaluate, normalize, train_digits_vit

# Trains in well under a second: enough to exercise the training loop and the cache.
TINY = DigitsConfig(embed_dim=16, depth=1, num_heads=2, epochs=1, batch_size=256)


def rows(split: digits.DigitsSplit) -> set[bytes]:
    """Each image with its label as bytes, to compare splits by content (digits has no duplicates)."""
    return {img.numpy().tobytes() + bytes([int(label)]) for img, label in zip(split.images, split.labels)}


def test_split_sizes_types_and_range():
    splits = digits_splits()
    assert {name: len(s) for name, s in splits.items()} == {"train": 1297, "calib": 250, "test": 500}
    for s in splits.values():
        assert s.images.dtype == torch.float32 and s.images.shape[1:] == (1, 8, 8)
        assert s.labels.dtype == torch.int64 and s.labels.shape == (len(s),)
        assert s.images.min() >= -1 and s.images.max() <= 1
        # Every pixel is one of the PIXEL_LEVELS values k / 8 - 1.
        assert set(((s.images.unique() + 1) * 8).tolist()) <= set(range(digits.PIXEL_LEVELS))
    assert set(splits["test"].labels.tolist()) == set(range(10))


def test_splits_are_deterministic_disjoint_and_calib_is_drawn_from_train():
    first, second = digits_splits(), digits_splits()
    for name in first:
        assert torch.equal(first[name].images, second[name].images)
        assert torch.equal(first[name].labels, second[name].labels)
    # The documented rule: the first 500 of a RandomState(0) permutation are the test images.
    raw = load_digits()
    order = np.random.RandomState(0).permutation(len(raw.target))
    assert torch.equal(first["test"].images, normalize(raw.images[order[:500]]).unsqueeze(1))
    assert torch.equal(first["train"].labels, torch.as_tensor(raw.target[order[500:]]))
    train, calib, test = rows(first["train"]), rows(first["calib"]), rows(first["test"])
    assert len(train) == 1297 and len(calib) == 250 and len(test) == 500  # no duplicate images
    assert not train & test
    assert calib <= train


def test_normalize_maps_pixel_levels_onto_minus_one_to_one():
    raw = torch.arange(digits.PIXEL_LEVELS)
    out = normalize(raw)
    assert out.dtype == torch.float32
    assert out[0] == -1 and out[8] == 0 and out[-1] == 1
    assert torch.equal(normalize(raw.numpy()), out)


@pytest.mark.parametrize("change,message", [
    ({"patch_size": 3}, "img_size 8 must be divisible by patch_size 3"),
    ({"embed_dim": 30, "num_heads": 4}, "embed_dim 30 must be divisible by num_heads 4"),
    ({"epochs": 0}, "epochs must be a positive integer, got 0"),
    ({"img_size": 16}, "img_size must be 8"),
    ({"lr": 0.0}, "lr must be positive"),
    ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1)"),
])
def test_config_rejects_invalid_values(change, message):
    with pytest.raises(ValueError, match="^" + re.escape(f"DigitsConfig: {message}")):
        DigitsConfig(**change)


# A different valid value for every field, so each one is shown to reach the hash.
OTHER_VALUES = {
    "img_size": None,  # only 8 is valid
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 4,
    "mlp_ratio": 3.0,
    "epochs": 3,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 32,
    "label_smoothing": 0.0,
    "max_shift_px": 2,
    "mixup_alpha": 0.0,
    "seed": 7,
}


def test_config_hash_is_stable_and_covers_every_field_and_the_code_version(monkeypatch):
    base = DigitsConfig()
    assert config_hash(base) == config_hash(DigitsConfig())
    assert re.fullmatch("[0-9a-f]{16}", config_hash(base))
    assert set(OTHER_VALUES) == {f.name for f in dataclasses.fields(DigitsConfig)}
    hashes = {config_hash(base)}
    for name, value in OTHER_VALUES.items():
        if value is not None:
            changed = dataclasses.replace(base, **{name: value})
            assert changed != base, name
            hashes.add(config_hash(changed))
    assert len(hashes) == 1 + sum(v is not None for v in OTHER_VALUES.values())
    monkeypatch.setattr(digits, "CODE_VERSION", digits.CODE_VERSION + "-next")
    assert config_hash(base) not in hashes


def test_model_is_restricted_to_the_supported_operators():
    model = digits.build_digits_vit(DigitsConfig())
    assert model.num_prefix_tokens == 1 and model.reg_token is None and model.global_pool == "token"
    assert model.patch_embed.num_patches == 16 and not model.dynamic_img_size
    assert isinstance(model.fc_norm, torch.nn.Identity) and isinstance(model.norm, torch.nn.LayerNorm)
    for block in model.blocks:
        assert isinstance(block.norm1, torch.nn.LayerNorm) and isinstance(block.norm2, torch.nn.LayerNorm)
        assert isinstance(block.ls1, torch.nn.Identity) and isinstance(block.ls2, torch.nn.Identity)
        assert isinstance(block.attn.q_norm, torch.nn.Identity)
        assert isinstance(block.attn.k_norm, torch.nn.Identity)
        assert isinstance(block.mlp.act, torch.nn.GELU)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_the_default_cache_is_the_per_user_one_from_any_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("FQVIT_CACHE_DIR", str(tmp_path / "cache"))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    model = train_digits_vit(TINY, progress=False)
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [f"digits-vit-{config_hash(TINY)}.pt"]
    monkeypatch.chdir(tmp_path / "b")  # another folder finds the same cache, so nothing retrains
    monkeypatch.setattr(digits, "_train", lambda *args: pytest.fail("retrained in another folder"))
    assert_same_weights(model.state_dict(), train_digits_vit(TINY, progress=False).state_dict())
    assert not list((tmp_path / "a").iterdir()) and not list((tmp_path / "b").iterdir())


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_training_is_cached_and_reused(tmp_path, monkeypatch):
    model = train_digits_vit(TINY, cache_dir=tmp_path, progress=False)
    assert not model.training
    (path,) = tmp_path.iterdir()
    assert path.name == f"digits-vit-{config_hash(TINY)}.pt"
    written = path.stat().st_mtime_ns
    # A cache hit must not train: make training fail, and expect identical weights back.
    monkeypatch.setattr(digits, "_train", lambda *args: pytest.fail("retrained despite a cached model"))
    cached = train_digits_vit(TINY, cache_dir=tmp_path, progress=False)
    assert not cached.training
    assert path.stat().st_mtime_ns == written
    assert_same_weights(model.state_dict(), cached.state_dict())


def test_training_is_deterministic_and_leaves_the_caller_state_alone(tmp_path):
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    threads = torch.get_num_threads()
    a = train_digits_vit(TINY, cache_dir=tmp_path / "a", progress=False)
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.get_num_threads() == threads
    b = train_digits_vit(TINY, cache_dir=tmp_path / "b", progress=False)
    assert_same_weights(a.state_dict(), b.state_dict())


def write_garbage(path: Path) -> None:
    path.write_bytes(b"not a checkpoint")


def write_truncated(path: Path) -> None:
    torch.save(digits.build_digits_vit(TINY).state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def write_plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(digits.build_digits_vit(TINY).state_dict()))


def write_missing_key(path: Path) -> None:
    state = digits.build_digits_vit(TINY).state_dict()
    del state["head.weight"]
    torch.save(state, path)


def write_other_architecture(path: Path) -> None:
    torch.save(digits.build_digits_vit(dataclasses.replace(TINY, embed_dim=32)).state_dict(), path)


@pytest.mark.parametrize(
    "corrupt", [write_garbage, write_truncated, write_plain_pickle, write_missing_key, write_other_architecture]
)
def test_corrupt_cache_is_retrained_and_replaced(tmp_path, caplog, corrupt):
    path = tmp_path / f"digits-vit-{config_hash(TINY)}.pt"
    corrupt(path)
    with caplog.at_level(logging.WARNING, logger=digits.__name__):
        model = train_digits_vit(TINY, cache_dir=tmp_path, progress=False)
    assert "discarding unreadable digits ViT cache" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # replaced, no temporary file left
    assert_same_weights(model.state_dict(), torch.load(path, weights_only=True))


def test_evaluate_reports_percent_and_restores_the_mode():
    model = digits.build_digits_vit(TINY).train()
    calib = digits_splits()["calib"]
    accuracy = evaluate(model, calib)
    assert 0.0 <= accuracy <= 100.0
    assert model.training
    # A model that always answers 9 scores exactly the share of nines.
    torch.nn.init.zeros_(model.head.weight)
    with torch.no_grad():
        model.head.bias.copy_(torch.arange(10.0))
    assert evaluate(model, calib) == pytest.approx(100.0 * float((calib.labels == 9).float().mean()))
