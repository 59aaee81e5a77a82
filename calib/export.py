"""The integer model: what the hardware needs per layer, one versioned file, and its builder.

File format (``*.fqvit.safetensors``): a safetensors file whose tensors are the integer parameters
(int8 weights, int32 biases, dyadic multipliers, PTF shifts, LayerNorm/GELU/exp tables) and whose
metadata holds ``format``, ``version`` and a JSON ``manifest``: architecture, quantization config
(with the LIS rule by name, ``quant["lis_rule"]``, a ``fqvit.contract.LIS_RULES`` key), the input quantizer, every integer scalar (zero points, shifts) and a SHA-256 of the tensor bytes.
Loading checks all of it and raises ExportError naming what is wrong.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fqvit.contract import LIS_RULES

from .intref import swin as intref_swin
from .intref import vit as intref_vit
from .intref.gelu import gelu_table
from .intref.layernorm import affine_params
from .intref.requant import dyadic
from .intref.residual import add_multipliers
from .intref.softmax import exp_table
from .qsim import QuantSim
from .quantizer import QParams, quantize

__all__ = ["FORMAT", "VERSION", "ExportError", "IntModel", "Builder", "fingerprint", "save", "load"]

FORMAT = "fqvit-int"
VERSION = 1
# Per architecture: the names of the tensors its integer forward reads, from (config, PTF on).
TENSOR_NAMES = {"vit": intref_vit.tensor_names, "swin": intref_swin.tensor_names}


class ExportError(Exception):
    """An integer-model file that cannot be used, with the reason."""


@dataclass
class IntModel:
    """An integer-only network: `arch` ("vit"/"swin") and `config` say how to run `tensors`/`ints`."""

    arch: str
    model: str
    config: dict
    quant: dict
    input: dict  # the one float step: {"scale", "zero"} of the input quantizer
    ints: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)

    def t(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise ExportError(f"integer model {self.model!r} has no tensor {name!r}") from None

    def i(self, name: str) -> int:
        try:
            return self.ints[name]
        except KeyError:
            raise ExportError(f"integer model {self.model!r} has no integer {name!r}") from None

    @property
    def lis_rule(self) -> str:
        """The LIS rounding rule the model was quantized with (``load`` checked it is known)."""
        return self.quant["lis_rule"]

    def zero(self, point: str) -> int:
        return self.i(f"zero.{point}")

    def alpha(self, point: str, channels: int) -> torch.Tensor:
        """PTF shifts of a point (all zero for a per-tensor point)."""
        return self.tensors.get(f"alpha.{point}", torch.zeros(channels, dtype=torch.int64))

    def quantize_input(self, images: torch.Tensor) -> torch.Tensor:
        """The only float step: normalized images to uint8 codes."""
        qp = QParams(torch.tensor(self.input["scale"], dtype=torch.float32), self.input["zero"])
        return quantize(images.to(torch.float32), qp).to(torch.uint8)


def _digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint(im: IntModel) -> str:
    """What the integer model computes, as a digest: its tensors and everything beside them. Two
    exports of the same calibration share it even when their files' bytes differ (the metadata's
    JSON need not serialize identically)."""
    rest = json.dumps({"arch": im.arch, "model": im.model, "config": im.config, "quant": im.quant, "input": im.input,
                       "ints": im.ints}, sort_keys=True)
    return hashlib.sha256(rest.encode() + _digest(im.tensors).encode()).hexdigest()[:16]


def save(im: IntModel, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in im.tensors.items()}
    manifest = {
        "arch": im.arch, "model": im.model, "config": im.config, "quant": im.quant, "input": im.input,
        "ints": im.ints, "sha256": _digest(tensors),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION), "manifest": json.dumps(manifest)})
    tmp.replace(path)
    return path


def load(path: str | Path) -> IntModel:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"integer model file {path} does not exist")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    if meta.get("format") != FORMAT:
        raise ExportError(f"{path} is not an {FORMAT} file (format {meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise ExportError(f"{path} has format version {meta.get('version')!r}; this code reads version {VERSION}. "
                          "Re-export it with `python -m calib`.")
    try:
        manifest = json.loads(meta["manifest"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ExportError(f"{path} has a missing or corrupt manifest: {e}") from None
    if _digest(tensors) != manifest.get("sha256"):
        raise ExportError(f"{path}: tensor data does not match the manifest checksum (corrupt file)")
    _check_lis_rule(path, manifest["quant"], manifest["ints"])
    _check_tensors(path, manifest, tensors)
    return IntModel(manifest["arch"], manifest["model"], manifest["config"], manifest["quant"], manifest["input"],
                    manifest["ints"], tensors)


def _check_lis_rule(path: Path, quant: dict, ints: dict) -> None:
    """Refuse a LIS rule this code does not know, and softmax (NUM, DEN) pairs that disagree with it."""
    rule = quant.get("lis_rule")
    if rule not in LIS_RULES:
        raise ExportError(f"{path} was quantized with LIS rule {rule!r}, which this code does not know "
                          f"(known: {', '.join(sorted(LIS_RULES))}); re-export it with `python -m calib`")
    if not quant.get("lis"):
        return
    for key in (k for k in ints if k.endswith(".softmax.num")):
        layer = key[: -len(".num")]
        if (ints[key], ints.get(f"{layer}.den")) != LIS_RULES[rule]:
            raise ExportError(f"{path}: {layer} has LIS thresholds {ints[key]}/{ints.get(f'{layer}.den')}, "
                              f"but the file's LIS rule {rule!r} is {'/'.join(map(str, LIS_RULES[rule]))}")


def _check_tensors(path: Path, manifest: dict, tensors: dict) -> None:
    """Refuse a file whose tensors are not exactly the ones its network reads (no default fills a gap)."""
    arch = manifest.get("arch")
    if arch not in TENSOR_NAMES:
        raise ExportError(f"{path}: architecture {arch!r} is not one of {sorted(TENSOR_NAMES)}")
    try:
        expected = TENSOR_NAMES[arch](manifest["config"], manifest["quant"]["ptf"])
    except (KeyError, TypeError) as e:
        raise ExportError(f"{path}: the manifest's {arch} config or quantization config lacks {e}") from None
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        parts = [f"{len(names)} {what}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
                 for what, names in (("missing tensors", missing), ("unexpected tensors", unexpected)) if names]
        raise ExportError(f"{path} does not hold the tensors of its {arch} network ({'; '.join(parts)}); "
                          "re-export it with `python -m calib`")


class Builder:
    """Turns calibrated quantization parameters and float weights into an IntModel, op by op."""

    def __init__(self, sim: QuantSim, arch: str, model: str, config: dict):
        if not sim.params:
            raise RuntimeError("export needs a calibrated model")
        self.sim = sim
        qin = self.qp("input")
        self.im = IntModel(arch, model, config, sim.cfg.to_dict(), {"scale": qin.base, "zero": qin.zero})
        for name, qp in sim.params.items():
            self.im.ints[f"zero.{name}"] = qp.zero
            if qp.alpha is not None:
                self.im.tensors[f"alpha.{name}"] = qp.alpha.to(torch.int8)

    def qp(self, point: str) -> QParams:
        try:
            return self.sim.params[point]
        except KeyError:
            raise RuntimeError(f"quantization point {point!r} was never calibrated") from None

    def scales(self, point: str, channels: int) -> np.ndarray:
        """Per-channel real scales of a point (PTF) or its scale repeated."""
        s = self.qp(point).scale.to(torch.float64).reshape(-1).numpy()
        return np.broadcast_to(s, (channels,)) if s.size == 1 else np.tile(s, channels // s.size)

    def constant(self, name: str, value: torch.Tensor, point: str) -> None:
        """A constant tensor (class token, position embedding) as codes of `point`."""
        self.im.tensors[name] = quantize(value.detach().to(torch.float32), self.qp(point)).to(torch.uint8)

    def linear(self, name: str, in_point: str, out_point: str | None) -> None:
        """Weight codes, int32 bias and per-channel requant multipliers; out_point None: int32 logits
        on the common scale s_in * min(s_w)."""
        wq = self.sim.weights[name]
        module = self.sim.layers[name]
        w = wq.codes.reshape(wq.codes.shape[0], -1)
        s_in = self.qp(in_point).base
        s_acc = s_in * wq.scale.to(torch.float64).numpy()
        t = self.im.tensors
        t[f"{name}.w"] = w.contiguous()
        # A layer without a bias gets zeros: every linear has its `.b`, so `load` can require it.
        bias = np.zeros(w.shape[0]) if module.bias is None else module.bias.detach().to(torch.float64).numpy()
        t[f"{name}.b"] = torch.from_numpy(np.rint(bias / s_acc).astype(np.int64)).to(torch.int32)
        s_out = s_acc.min() if out_point is None else self.scales(out_point, w.shape[0])
        t[f"{name}.mult"], t[f"{name}.shift"] = dyadic(s_acc / s_out, f"{name} requantization")

    def matmul(self, name: str, real: float) -> None:
        """A scalar requantization multiplier for an activation x activation product."""
        m, s = dyadic(real, f"{name} requantization")
        self.im.ints[f"{name}.mult"], self.im.ints[f"{name}.shift"] = int(m), int(s)

    def layernorm(self, name: str, ln: torch.nn.LayerNorm, out_point: str) -> None:
        C = ln.normalized_shape[0]
        G, B, fg = affine_params(ln.weight.detach().double().numpy(), ln.bias.detach().double().numpy(),
                                 self.scales(out_point, C), name)
        self.im.tensors[f"{name}.G"], self.im.tensors[f"{name}.B"] = G.to(torch.int32), B.to(torch.int64)
        self.im.ints[f"{name}.fg"] = fg

    def add(self, name: str, a: str, b: str, out: str, channels: int) -> None:
        so = self.scales(out, channels)
        ma, mb, shift = add_multipliers(self.scales(a, channels) / so, self.scales(b, channels) / so, name)
        self.im.tensors[f"{name}.ma"], self.im.tensors[f"{name}.mb"] = ma.to(torch.int32), mb.to(torch.int32)
        self.im.ints[f"{name}.shift"] = shift

    def softmax(self, name: str, logits_point: str) -> None:
        cfg = self.sim.cfg
        self.im.tensors[f"{name}.exp"] = exp_table(self.qp(logits_point).base).to(torch.int32)
        if cfg.lis:
            self.im.ints[f"{name}.num"], self.im.ints[f"{name}.den"] = LIS_RULES[cfg.lis_rule]
        else:
            m, s = dyadic(1.0 / self.qp(name).base, f"{name} reciprocal")
            self.im.ints[f"{name}.inv_mult"], self.im.ints[f"{name}.inv_shift"] = int(m), int(s)

    def gelu(self, prefix: str) -> None:
        qi, qo = self.qp(f"{prefix}.fc1"), self.qp(f"{prefix}.gelu")
        self.im.tensors[f"{prefix}.gelu"] = gelu_table(qi.base, qi.zero, qo.base, qo.zero).to(torch.uint8)
