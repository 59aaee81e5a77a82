"""The quantization points of one network, switched between float, calibration and fake-quant.

The network forwards (calib/vit.py, calib/swin.py) are written once, against this object: every
place FQ-ViT quantizes calls ``sim.act(name, x)``, every weight layer ``sim.linear`` /
``sim.conv``, and the non-linear ops ``sim.layernorm``, ``sim.softmax`` and ``sim.gelu``. In
``float`` mode they are the float ops, in ``calibrate`` mode observers watch the float values,
and in ``quant`` mode they fake-quantize with the calibrated parameters, so the float model, the
calibration pass and the fake-quant model cannot drift apart.
"""

import functools
import math

import torch
import torch.nn.functional as F

from fqvit.contract import EXP_BITS, LIS_RULES, ZERO_CODE

from .config import QuantConfig
from .intref.layernorm import affine_params, layernorm
from .intref.softmax import exp_table, lis_codes, lis_weights
from .observers import make_observer
from .quantizer import QParams, WeightQ, fake_quant, quantize, quantize_weight

__all__ = ["QuantSim"]

MODES = ("float", "calibrate", "quant")


class QuantSim:
    def __init__(self, cfg: QuantConfig):
        self.cfg = cfg
        self.mode = "float"
        self.last = False  # the calibration batch on which OMSE / PTF search
        self.observers = {}
        self.params: dict[str, QParams] = {}
        self.layers: dict[str, torch.nn.Module] = {}
        self.weights: dict[str, WeightQ] = {}
        self.fake_weights: dict[str, torch.Tensor] = {}
        self.capture: dict | None = None  # quant mode: point name -> codes, for comparisons
        self.input_quant = True  # FQ-ViT's ViT-B/L have no input quantizer (official mode only)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "quant" and not self.params:
            raise RuntimeError("quantization parameters are missing: calibrate first")
        self.mode = mode

    def finish_calibration(self) -> None:
        """Turn every observer into parameters and quantize every weight seen."""
        self.params = {name: obs.qparams(not self.cfg.official) for name, obs in self.observers.items()}
        for obs in self.observers.values():
            obs.last = None  # the last batch is only needed for the search
        self.weights = {name: quantize_weight(m.weight, self.cfg.official) for name, m in self.layers.items()}
        self.fake_weights = {name: wq.dequant() for name, wq in self.weights.items()}

    # -- quantization points ---------------------------------------------------------------
    def act(self, name: str, x: torch.Tensor, ptf: bool = False, fake: bool = True) -> torch.Tensor:
        """A uint8 activation quantizer; `ptf` marks a LayerNorm input (residual stream).

        ``fake=False`` calibrates the point but leaves the fake-quant forward unquantized there:
        the points the integer model needs but the official FQ-ViT forward does not quantize.
        """
        if self.mode == "calibrate":
            if name not in self.observers:
                self.observers[name] = make_observer(self.cfg.observer, ptf and self.cfg.ptf)
            self.observers[name].update(x, self.last)
        elif self.mode == "quant" and fake:
            if self.capture is not None:
                self.capture[name] = quantize(x, self.params[name])
            return fake_quant(x, self.params[name])
        return x

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return self.act("input", x, fake=self.input_quant or not self.cfg.official)

    def weight(self, name: str, module: torch.nn.Module) -> torch.Tensor:
        if self.mode == "calibrate":
            self.layers[name] = module
        if self.mode == "quant":
            return self.fake_weights[name]
        return module.weight

    def linear(self, name: str, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(name, module), module.bias)

    def conv(self, name: str, module: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(name, module), module.bias, module.stride, module.padding)

    # -- non-linear ops --------------------------------------------------------------------
    def layernorm(self, module: torch.nn.LayerNorm, x: torch.Tensor, in_name: str, out_name: str,
                  ptf: bool = False) -> torch.Tensor:
        """LayerNorm from point `in_name` to point `out_name` (a PTF point where it feeds a residual).

        Fake-quant runs the integer LayerNorm itself, as FQ-ViT's fake-quant runs its integer LN: with
        PTF inputs the LayerNorm *is* an integer algorithm, and a float stand-in would differ from
        it by a code here and there, which 4-bit attention downstream amplifies."""
        if self.mode == "quant" and self.cfg.official:
            y = _fqvit_int_layernorm(x, self.params[in_name], self.params[out_name], module)
        elif self.mode == "quant":
            y = _int_layernorm(x, self.params[in_name], self.params[out_name], module)
        else:
            y = F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)
        return self.act(out_name, y, ptf=ptf)

    def softmax(self, name: str, logits: torch.Tensor, logits_name: str,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention probabilities; `mask` (bool) marks keys excluded from a row."""
        if self.mode == "quant" and self.cfg.lis and not self.cfg.official:
            # Our LIS is an integer op on the softmax input's codes: run the reference itself.
            qp = self.params[logits_name]
            codes = lis_codes(quantize(logits, qp), _exp_table(qp.base), LIS_RULES[self.cfg.lis_rule], mask)
            return lis_weights(codes).to(logits.dtype) / 2.0**EXP_BITS
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        if self.mode == "quant" and self.cfg.lis:
            p = _fqvit_lis(logits, self.params[logits_name].base)
            return p if mask is None else p.masked_fill(mask, 0.0)
        p = torch.softmax(logits, dim=-1)
        return p if self.cfg.lis else self.act(name, p)

    def gelu(self, prefix: str, act: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        """GELU between fc1 and fc2. Ours quantizes fc1's output first so GELU can be a table."""
        h = self.act(f"{prefix}.fc1", h, fake=not self.cfg.official)
        return self.act(f"{prefix}.gelu", act(h))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """FQ-ViT quantizes the logits to uint8; the integer model keeps int32 logits."""
        return self.act("logits", x) if self.cfg.official else x


@functools.lru_cache(maxsize=256)
def _exp_table(scale: float) -> torch.Tensor:
    return exp_table(scale)


def _int_layernorm(x: torch.Tensor, qin: QParams, qout: QParams, ln: torch.nn.LayerNorm) -> torch.Tensor:
    """calib.intref.layernorm on the codes of the fake-quant input, dequantized."""
    C = x.shape[-1]
    s_in = qin.scale.reshape(-1)
    tile = C // s_in.numel() if s_in.numel() > 1 else 1  # Swin patch merging: 4 tokens side by side
    alpha = (qin.alpha if qin.alpha is not None else torch.zeros(C // tile, dtype=torch.int64)).repeat(tile)
    s_out = qout.scale.to(torch.float64).reshape(-1).expand(C) if qout.scale.dim() else qout.scale.to(torch.float64)
    G, B, fg = affine_params(ln.weight.detach().double().numpy(), ln.bias.detach().double().numpy(), s_out.numpy())
    codes = torch.round(x / qin.scale.repeat(tile) if qin.scale.dim() else x / qin.scale).to(torch.int64) + qin.zero
    y = layernorm(codes, qin.zero, alpha, G, B, fg, qout.zero)
    return (y - qout.zero).to(x.dtype) * qout.scale


def _fqvit_lis(x: torch.Tensor, scale: float) -> torch.Tensor:
    """FQ-ViT's LIS exactly as its code runs it (layers.py:L237-288): I-BERT i-exp with n = 30,
    float32 emulation, R = round(sum / exp), 1.5-threshold log rounding, codes >= 16 become 0."""
    n, x0 = 30, -0.6931
    coef = (0.35815147, 0.96963238, 1.0)
    x_int = x / scale
    x_int = x_int - x_int.max(dim=-1, keepdim=True).values
    x0_int = math.floor(x0 / scale)
    x_int = torch.clamp(x_int, min=n * x0_int)  # also catches -inf (masked keys)
    q = torch.floor(x_int / x0_int)
    r = x_int - x0_int * q
    b_int = math.floor(coef[1] / coef[0] / scale)
    c_int = math.floor(coef[2] / coef[0] / scale**2)
    z = r * (r + b_int) + c_int
    exp_int = torch.clamp(torch.floor(z * 2 ** (n - q)), min=0)
    total = exp_int.sum(dim=-1, keepdim=True)
    big = torch.round(total / exp_int)
    k = torch.floor(torch.log2(big))
    code = k + ((big - 2**k) >= 2 ** (k - 1)).to(x.dtype)
    zero = code >= ZERO_CODE
    out = torch.pow(2.0, -torch.clamp(code, 0, ZERO_CODE - 1))
    return out.masked_fill(zero, 0.0)


def _fqvit_int_layernorm(x: torch.Tensor, qin: QParams, qout: QParams, ln: torch.nn.LayerNorm) -> torch.Tensor:
    """FQ-ViT's 'int' LayerNorm (layers.py:L151-206): shifted integers, integer moments, a per-token
    8-bit-mantissa dyadic multiplier, float gamma/beta; no eps (sigma = 0 gives NaN there)."""
    s = qin.scale.reshape(-1) if qin.scale.dim() else qin.scale.reshape(1)
    s = s.repeat(x.shape[-1] // s.numel())  # Swin patch merging: 4 tokens' channels side by side
    s_min = s.min()
    x_q = torch.round(x / s) * torch.round(s / s_min)
    C = x.shape[-1]
    mean = x_q.mean(dim=-1, keepdim=True) * s_min
    std = (s_min / C) * torch.sqrt(C * (x_q**2).sum(dim=-1, keepdim=True) - x_q.sum(dim=-1, keepdim=True) ** 2)
    A = (s_min / std) * ln.weight / qout.base
    N = torch.clamp(7 - torch.floor(torch.log2(A.abs())), 0, 31)
    M = torch.clamp(torch.floor(A.abs() * 2**N), 0, 255)
    B = torch.round((ln.bias - mean / std * ln.weight) / qout.base * 2**N)
    y = torch.round((A.sign() * M * x_q + B) / 2**N)
    return y * qout.base
