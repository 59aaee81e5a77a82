"""Real test vectors: every intermediate tensor of the calibrated digits model, cached on disk.

Unit testbenches feed the hardware the activations it meets in a real network (LayerNorm inputs
with their PTF shifts, softmax inputs with their exp tables, ...), not only random numbers.
``digits_vectors()`` calibrates the embedded digits model (PTF + LIS, MinMax), exports it, runs the
integer reference on a few test images with a trace, and caches (model file, trace) in the per-user
cache (``fqvit.cache``, part ``vectors``); later calls load the cache.
"""

from pathlib import Path

import torch

from fqvit import cache

__all__ = ["digits_vectors"]


def digits_vectors(images: int = 4):
    """(IntModel, trace dict name -> integer tensor, input codes) for the digits model."""
    from calib import export
    from calib.config import QuantConfig
    from calib.data import digits_data
    from calib.digits import DigitsConfig, config_hash
    from calib.models import DIGITS, create_model
    from calib.pipeline import calibrate, integer_forward, quantize_model

    folder = cache.part("vectors")
    key = f"digits-{config_hash(DigitsConfig())}-{images}"
    model_path, trace_path = folder / f"{key}.fqvit.safetensors", folder / f"{key}.trace.pt"
    if model_path.is_file() and trace_path.is_file():
        saved = torch.load(trace_path, weights_only=True)
        return export.load(model_path), saved["trace"], saved["codes"]
    folder.mkdir(parents=True, exist_ok=True)
    model = create_model(DIGITS, progress=False)  # may train: outside no_grad
    with torch.no_grad():
        data = digits_data(images=images)
        sim = calibrate(model, QuantConfig(ptf=True, lis=True), data, progress=False)
        im = quantize_model(model, sim, DIGITS, model_path)
        x, _ = next(iter(data.test))
        codes = im.quantize_input(x)
        trace = {}
        integer_forward(im, codes, trace)
    tmp = Path(str(trace_path) + ".tmp")
    torch.save({"trace": trace, "codes": codes}, tmp)
    tmp.replace(trace_path)
    return im, trace, codes
