"""The issue's acceptance numbers on the embedded digits model (trained once, then cached)."""

import pytest
import torch

from calib.config import QuantConfig
from calib.data import digits_data
from calib.models import DIGITS, create_model
from calib.pipeline import calibrate, evaluate, quantize_model


@pytest.fixture(scope="module")
def model():
    torch.set_grad_enabled(False)
    yield create_model(DIGITS, progress=False)
    torch.set_grad_enabled(True)


@pytest.mark.parametrize("cfg, budget", [(QuantConfig(ptf=True, lis=False), 0.5), (QuantConfig(ptf=True, lis=True), 1.0)],
                         ids=["ptf-888", "ptf-lis-884"])
def test_integer_model_is_within_the_papers_budget(model, cfg, budget, tmp_path):
    data = digits_data()
    sim = calibrate(model, cfg, data, progress=False)
    im = quantize_model(model, sim, DIGITS, tmp_path / "digits.fqvit.safetensors")
    ev = evaluate(model, sim, im, data, progress=False)
    top1 = ev.top1()
    assert ev.images == 500
    assert top1["float"] >= 97.0
    assert top1["integer"] >= top1["float"] - budget, top1
    assert ev.agree_int_fq >= 0.99 * ev.images, (ev.agree_int_fq, top1)
