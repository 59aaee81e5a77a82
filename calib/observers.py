"""Calibration observers (FQ-ViT's MinMax, EMA, Percentile, OMSE) and the PTF search.

As in FQ-ViT (``models/ptq/observer/``), statistics come from the full-precision network: during
calibration every quantization point is the identity and only watches. Channels are the last
dimension ([B, N, C] tokens, [B, H, W, C] Swin maps). OMSE and PTF search on the last calibration
batch, which the calibration loop flags with ``last=True``.
"""

import numpy as np
import torch

from .quantizer import QParams, asymmetric, fake_quant

__all__ = ["OBSERVERS", "make_observer", "Observer", "PTFObserver"]

EMA_MOMENTUM = 0.01
PERCENTILE = 1e-5
OMSE_STEPS = 90
OMSE_MAX_ELEMENTS = 2**20
PTF_K = 3


class Observer:
    """MinMax: the running minimum and maximum of everything seen."""

    def __init__(self):
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.last: torch.Tensor | None = None

    def batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.min(), x.max()

    def update(self, x: torch.Tensor, last: bool = False) -> None:
        x = x.detach().to(torch.float32)
        lo, hi = self.batch_range(x)
        self.merge(lo, hi)
        if last:
            self.last = x

    def merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def qparams(self, include_zero: bool = True) -> QParams:
        if self.lo is None:
            raise RuntimeError("observer saw no data: run calibration before quantizing")
        return QParams(*asymmetric(self.lo, self.hi, include_zero))


class EMAObserver(Observer):
    """First batch initialises; then ``m += 0.01 * (batch - m)`` for min and max."""

    def merge(self, lo, hi):
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + EMA_MOMENTUM * (lo - self.lo)
            self.hi = self.hi + EMA_MOMENTUM * (hi - self.hi)


class PercentileObserver(EMAObserver):
    """The 1e-5 and 1 - 1e-5 quantiles of each batch, smoothed across batches like EMA."""

    def batch_range(self, x):
        flat = x.flatten()
        if flat.numel() <= 16_000_000:  # torch.quantile's input limit
            qs = torch.quantile(flat, torch.tensor([PERCENTILE, 1 - PERCENTILE]))
            return qs[0], qs[1]
        lo, hi = np.percentile(flat.numpy(), [100 * PERCENTILE, 100 * (1 - PERCENTILE)])
        return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)


class OMSEObserver(Observer):
    """MinMax range shrunk by 0..89 %, keeping the one with least squared error on the last batch.

    The error is measured on at most 2**20 evenly strided elements of the batch (FQ-ViT uses all of
    them on a GPU; DeiT's fc1 output alone is 15M elements per 100 images, too many for 90 passes
    on a CPU).
    """

    def qparams(self, include_zero: bool = True):
        if self.last is None:
            return super().qparams(include_zero)
        flat = self.last.flatten()
        data = flat[:: max(1, -(-flat.numel() // OMSE_MAX_ELEMENTS))]
        best, best_err = None, None
        for i in range(OMSE_STEPS):
            shrink = 1.0 - 0.01 * i
            qp = QParams(*asymmetric(self.lo * shrink, self.hi * shrink, include_zero))
            err = float(((fake_quant(data, qp) - data) ** 2).mean())
            if best_err is None or err < best_err:
                best, best_err = qp, err
        return best


class PTFObserver(Observer):
    """Power-of-Two Factor: per-channel scales s * 2**alpha[c], alpha in 0..3, one zero point.

    The zero point comes from the coarsest scale s * 2**K (FQ-ViT's choice, ptf.py:L41-47), and
    each channel takes the alpha with least squared error on the last batch (ties: smaller alpha).
    """

    def batch_range(self, x):
        flat = x.reshape(-1, x.shape[-1])
        return flat.amin(dim=0), flat.amax(dim=0)

    def qparams(self, include_zero: bool = True):
        if self.lo is None:
            raise RuntimeError("observer saw no data: run calibration before quantizing")
        coarse, zero = asymmetric(self.lo.min(), self.hi.max(), include_zero)
        base = coarse / 2**PTF_K
        data = (self.last if self.last is not None else torch.stack([self.lo, self.hi])).reshape(-1, self.lo.numel())
        errs = []
        for a in range(PTF_K + 1):
            qp = QParams(base * 2**a, zero)
            errs.append(((fake_quant(data, qp) - data) ** 2).mean(dim=0))
        alpha = torch.stack(errs).argmin(dim=0)  # first minimum: the smaller alpha on ties
        return QParams(base * torch.pow(2.0, alpha.to(torch.float32)), zero, alpha=alpha.to(torch.int64))


OBSERVERS = {"minmax": Observer, "ema": EMAObserver, "percentile": PercentileObserver, "omse": OMSEObserver}


def make_observer(kind: str, ptf: bool = False) -> Observer:
    """The observer for a point: PTF points use the PTF search whatever `kind` is (as FQ-ViT)."""
    if ptf:
        return PTFObserver()
    return OBSERVERS[kind]()
