"""The integer ops of calib/intref against their stated definitions and float LayerNorm/softmax."""

import math

import numpy as np
import pytest
import torch

from calib.intref.attnv import attnv_shift
from calib.intref.gelu import gelu, gelu_table
from calib.intref.layernorm import MAX_CHANNELS, affine_params, isqrt, layernorm
from calib.intref.requant import check_mult, dyadic, requantize, round_shift
from calib.intref.residual import add_multipliers, add_requant
from calib.intref.softmax import LIS_RULES, ZERO_CODE, exp_rows, exp_table, lis_codes, lis_weights, softmax_u8


def test_dyadic_is_close_and_in_range():
    real = np.array([1e-9, 3e-5, 0.37, 1.0, 1.9999999, 1234.5])
    mult, shift = dyadic(real)
    check_mult(mult, shift)
    approx = mult.double().numpy() / 2.0 ** shift.double().numpy()
    assert np.all(np.abs(approx / real - 1) <= 2.0**-15)
    for bad in (0.0, -1.0, float("nan"), 2.0**20):
        with pytest.raises(ValueError, match="multiplier"):
            dyadic(bad)


def test_round_shift_rounds_half_up():
    x = torch.tensor([-6, -5, -3, -2, -1, 0, 1, 2, 3, 5, 6])
    assert round_shift(x, 2).tolist() == [math.floor(v / 4 + 0.5) for v in x.tolist()]
    assert round_shift(x, torch.full_like(x, 2)).tolist() == round_shift(x, 2).tolist()
    with pytest.raises(ValueError):
        round_shift(x, 0)


def test_requantize_clamps_and_matches_real_multiplier():
    acc = torch.arange(-100000, 100000, 997)
    mult, shift = dyadic(0.0021)
    got = requantize(acc, mult, shift, zero=128)
    want = torch.clamp(torch.floor(acc.double() * mult.item() / 2.0 ** shift.item() + 0.5) + 128, 0, 255)
    assert torch.equal(got, want.long())
    assert got.min() == 0 and got.max() == 255


def _float_ln_codes(q, z, alpha, gamma, beta, s_out, z_out):
    x = ((q - z) * 2**alpha).double()
    y = torch.nn.functional.layer_norm(x, (x.shape[-1],), torch.as_tensor(gamma), torch.as_tensor(beta), eps=0.0)
    return torch.clamp(torch.round(y / s_out) + z_out, 0, 255)


@pytest.mark.parametrize("channels", [8, 64, 768, MAX_CHANNELS])
def test_layernorm_within_one_code_of_float(channels):
    g = torch.Generator().manual_seed(channels)
    q = torch.randint(0, 256, (16, channels), generator=g)
    alpha = torch.randint(0, 4, (channels,), generator=g)
    gamma = (torch.rand(channels, generator=g, dtype=torch.float64) + 0.2).numpy()
    beta = (torch.randn(channels, generator=g, dtype=torch.float64) * 0.3).numpy()
    G, B, fg = affine_params(gamma, beta, 0.03)
    got = layernorm(q, 120, alpha, G, B, fg, 110)
    want = _float_ln_codes(q, 120, alpha, gamma, beta, 0.03, 110)
    assert (got - want).abs().max() <= 1


def test_layernorm_extremes_and_zero_variance():
    C = MAX_CHANNELS
    q = torch.zeros((2, C), dtype=torch.int64)
    q[0, ::2] = 255  # largest variance: half the channels at each extreme, all shifted by 3
    q[1] = 7  # every channel at the zero point: zero variance
    alpha = torch.full((C,), 3)
    gamma, beta = np.ones(C), np.linspace(-1, 1, C)
    G, B, fg = affine_params(gamma, beta, 0.05)
    out = layernorm(q, 7, alpha, G, B, fg, 128)
    beta_codes = torch.clamp(torch.round(torch.as_tensor(beta) / 0.05) + 128, 0, 255).long()
    assert torch.equal(out[1], beta_codes)  # LayerNorm's limit; FQ-ViT divides by zero here
    assert (out[0] - _float_ln_codes(q[:1], 7, alpha, gamma, beta, 0.05, 128)[0]).abs().max() <= 1
    with pytest.raises(ValueError, match="channels"):
        layernorm(torch.zeros((1, C + 1), dtype=torch.int64), 0, torch.zeros(C + 1, dtype=torch.int64), G, B, fg, 0)


def test_isqrt_exact():
    v = torch.tensor([0, 1, 2, 3, 4, 99, 100, 2**46 - 1, 2**46, 2**47 + 12345])
    r = isqrt(v)
    assert all(int(a) == math.isqrt(int(b)) for a, b in zip(r, v))


def _lis_by_definition(x, table, rule, mask=None):
    """Literal statement of the LIS rule: count the thresholds the ratio passes."""
    num, den = rule
    e, total = exp_rows(x, table, mask)
    return sum(((den * total) >= ((num * e) << t)).long() for t in range(ZERO_CODE))


@pytest.mark.parametrize("rule", sorted(LIS_RULES))
@pytest.mark.parametrize("scale", [0.004, 0.05, 0.4])
def test_lis_codes_follow_definition(rule, scale):
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (64, 3, 49), generator=g)
    mask = torch.rand((64, 1, 49), generator=g) < 0.3
    table = exp_table(scale).to(torch.int32)  # the exported dtype: the op must widen it
    for m in (None, mask):
        assert torch.equal(lis_codes(x, table, LIS_RULES[rule], m), _lis_by_definition(x, table, LIS_RULES[rule], m))


def test_lis_fqvit_rule_is_log_round():
    """With exact ratios R = sum/e, the fqvit rule is FQ-ViT's log_round (k = floor(log2 R), +1 if
    R >= 1.5 * 2**k) with codes >= 16 as the zero state."""
    for ratio in [1, 1.49, 1.5, 2, 2.99, 3, 23, 24, 1000, 32767, 49151, 49152, 10**6]:
        e = torch.tensor([[1000, 0]])
        total = int(round(ratio * 1000))
        k = math.floor(math.log2(total / 1000))
        want = k + (total / 1000 >= 1.5 * 2**k)
        want = ZERO_CODE if want >= ZERO_CODE else want
        num, den = LIS_RULES["fqvit"]
        got = sum(int(den * total >= (num * int(e[0, 0])) << t) for t in range(ZERO_CODE))
        assert got == want, ratio


def test_lis_edge_rows():
    table = exp_table(0.1)
    equal = torch.full((1, 17), 99)
    assert lis_codes(equal, table, LIS_RULES["fqvit"]).tolist() == [[4] * 17]  # R = 17: floor(log2) = 4, 17 < 24
    twenty_two = torch.full((1, 22), 99)  # R = 22: fqvit 1.5 * 8 <= 22 < 1.5 * 16, nearest 22 >= 4/3 * 16
    assert lis_codes(twenty_two, table, LIS_RULES["fqvit"]).tolist() == [[4] * 22]
    assert lis_codes(twenty_two, table).tolist() == [[5] * 22]  # the default rule is nearest
    dominant = torch.zeros((1, 197), dtype=torch.int64)
    dominant[0, 5] = 255
    codes = lis_codes(dominant, table)
    assert codes[0, 5] == 0 and bool((codes[0, torch.arange(197) != 5] == ZERO_CODE).all())
    all_masked = lis_codes(equal, table, mask=torch.ones_like(equal, dtype=torch.bool))
    assert bool((all_masked == ZERO_CODE).all())
    assert lis_weights(torch.tensor([0, 1, 15, ZERO_CODE])).tolist() == [2**15, 2**14, 1, 0]


def test_attnv_is_a_sum_of_shifts():
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, ZERO_CODE + 1, (2, 5, 7), generator=g)
    v = torch.randint(0, 256, (2, 7, 4), generator=g)
    got = attnv_shift(codes, v, 131)
    for b in range(2):
        for i in range(5):
            for d in range(4):
                want = sum((int(v[b, j, d]) - 131) << (15 - int(codes[b, i, j]))
                           for j in range(7) if codes[b, i, j] < ZERO_CODE)
                assert int(got[b, i, d]) == want


def test_softmax_u8_close_to_float():
    s, s_p = 0.06, 1 / 255
    table = exp_table(s)
    x = torch.randint(0, 256, (100, 49), generator=torch.Generator().manual_seed(1))
    m, n = dyadic(1 / s_p)
    got = softmax_u8(x, table, int(m), int(n), 0)
    want = torch.round(torch.softmax(x.double() * s, dim=-1) / s_p)
    assert (got - want).abs().max() <= 1


def test_gelu_table_matches_float():
    table = gelu_table(0.05, 100, 0.03, 10)
    codes = torch.arange(256)
    x = (codes - 100) * 0.05
    want = torch.clamp(torch.round(torch.nn.functional.gelu(x.double()) / 0.03) + 10, 0, 255).long()
    assert (gelu(codes, table) - want).abs().max() <= 1  # ties round differently in float64 vs Python
    assert torch.equal(gelu(codes, table), table)


def test_add_requant_within_one_code():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, 256, (50, 16), generator=g), torch.randint(0, 256, (50, 16), generator=g)
    sa = 0.02 * 2.0 ** torch.randint(0, 4, (16,), generator=g)
    so = 0.03 * 2.0 ** torch.randint(0, 4, (16,), generator=g)
    ma, mb, shift = add_multipliers((sa / so).numpy(), (0.05 / so).numpy())
    got = add_requant(a, 120, ma, b, 90, mb, shift, 128)
    want = torch.clamp(torch.round(((a - 120) * sa + (b - 90) * 0.05) / so) + 128, 0, 255)
    assert (got - want).abs().max() <= 1
    with pytest.raises(ValueError):
        add_multipliers(np.array([0.0]), np.array([1.0]))
