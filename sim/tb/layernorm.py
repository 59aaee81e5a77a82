"""cocotb testbench of the LayerNorm unit (``hw.layernorm``), compared with ``calib.intref.layernorm``.

Run through ``sim.toolchain`` (see ``tests/test_layernorm_sim.py``); the configuration comes in
``$LAYERNORM_CONFIG`` as JSON, and the digits model's LayerNorm cases (``digits_cases``, saved
with ``torch.save``) in ``$LAYERNORM_DIGITS``; without it that test is skipped. Each layer writes its
parameters through ``params``, then streams its tokens (one channel per beat, ``last`` on the final
one) back to back and waits for all their outputs; every output code is compared with ``layernorm``
on the same token.
"""

import json
import os
import random
from dataclasses import dataclass

import cocotb
import numpy as np
import torch

from calib.intref.layernorm import FN, affine_params, bit_length, isqrt, layernorm
from calib.intref.requant import round_shift
from hw.layernorm import LayerNormConfig
from hw.payload import PayloadCodec
from sim.scoreboard import assert_bit_exact
from sim.tb.common import seeded, start
from sim.tb.jobs import Job, JobRun, run_jobs

CFG = LayerNormConfig(**json.loads(os.environ.get("LAYERNORM_CONFIG", "{}")))
PARAM_CODEC = PayloadCodec(CFG.param_layout)
IN_CODEC = PayloadCodec(CFG.in_layout)
OUT_CODEC = PayloadCodec(CFG.out_layout)


@dataclass
class Layer:
    """One LayerNorm's parameters (alpha/G/B for its widest token) and its input/output zero points."""

    what: str
    z: int
    z_out: int
    fg: int
    alpha: torch.Tensor
    G: torch.Tensor
    B: torch.Tensor

    def words(self) -> list[int]:
        return PARAM_CODEC.encode(CFG.param_fields(self.z, self.z_out, self.fg, self.alpha, self.G, self.B))

    def reference(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """The reference's output of every token (one batched call per token width)."""
        out = [None] * len(tokens)
        for c in {len(t) for t in tokens}:
            index = [i for i, t in enumerate(tokens) if len(t) == c]
            want = layernorm(torch.stack([tokens[i] for i in index]), self.z, self.alpha[:c], self.G[:c], self.B[:c],
                             self.fg, self.z_out)
            for i, row in zip(index, want):
                out[i] = row
        return out

    def explain(self, token: torch.Tensor):
        """Per output element: its inputs and the token's intermediate values (the reference's steps)."""
        c_all = len(token)
        x = (token.to(torch.int64) - self.z) << self.alpha[:c_all].to(torch.int64)
        m1, m2 = int(x.sum()), int((x * x).sum())
        d = int(isqrt(torch.tensor(c_all * m2 - m1 * m1)))
        k = int(bit_length(torch.tensor(d)))
        r = (1 << (15 + k)) // d if d else 0

        def explain(idx):
            c = idx[0]
            n = int(round_shift(torch.tensor((c_all * int(x[c]) - m1) * r), k + 15 - FN))
            return (f"q {int(token[c])} alpha {int(self.alpha[c])} G {int(self.G[c])} B {int(self.B[c])}: "
                    f"X {int(x[c])} n {n}; token M1 {m1} M2 {m2} D {d} k {k} R {r}; "
                    f"z {self.z} z_out {self.z_out} fg {self.fg}")
        return explain

    def check(self, tokens: list[torch.Tensor], out: dict[str, np.ndarray]) -> None:
        """Every token's output beats (q and last) against the reference; on a mismatch, the
        token's inputs and intermediate values."""
        first = 0
        for i, (token, want) in enumerate(zip(tokens, self.reference(tokens))):
            c = len(token)
            got, last = torch.from_numpy(out["q"][first:first + c]), out["last"][first:first + c].tolist()
            first += c
            assert last == [0] * (c - 1) + [1], f"{self.what} token {i} (C={c}): last flags {last}"
            if torch.equal(got, want):
                continue
            try:
                assert_bit_exact(f"{CFG.name} {self.what} token {i} (C={c})", got, want, self.explain(token))
            except AssertionError as err:
                with np.printoptions(threshold=np.inf, linewidth=160):
                    raise AssertionError(f"{err}\n  q {token.numpy()}\n  alpha {self.alpha[:c].numpy()}\n"
                                         f"  G {self.G[:c].numpy()}\n  B {self.B[:c].numpy()}") from None


def token_words(tokens: list[torch.Tensor]) -> list[int]:
    return IN_CODEC.encode({"q": np.concatenate([t.numpy() for t in tokens]),
                            "last": np.concatenate([np.arange(len(t)) == len(t) - 1 for t in tokens])})


async def run_layer(dut, clock, layer: Layer, tokens: list[torch.Tensor], idle: float, seed) -> JobRun:
    """Write the layer's parameters, stream its tokens, check every output; the next layer's
    parameters follow only once this one is out."""
    words = token_words(tokens)
    job = Job(words, len(words), layer.words(), check=lambda out: layer.check(tokens, out))
    # an upper bound: every token loaded, normalized and emitted one after another
    serial = sum(2 * len(t) + CFG.latency for t in tokens)
    return await run_jobs(dut, clock, [job], OUT_CODEC, idle=idle, seed=seed, cycles=len(job.params) + serial + 100)


def log_uniform(gen, lo, hi) -> float:
    return float(2.0 ** (lo + (hi - lo) * torch.rand((), generator=gen)))


def random_layer(gen, channels: int, what: str) -> Layer:
    """PTF shifts 0..3, gamma/beta of both signs, a random output scale, random zero points."""
    gamma = (torch.rand(channels, generator=gen, dtype=torch.float64) * 4 - 2) * log_uniform(gen, -4, 2)
    beta = torch.randn(channels, generator=gen, dtype=torch.float64) * log_uniform(gen, -4, 2)
    G, B, fg = affine_params(gamma.numpy(), beta.numpy(), log_uniform(gen, -8, -1), what)
    z, z_out = (int(v) for v in torch.randint(0, 256, (2,), generator=gen))
    return Layer(f"{what} fg {fg}", z, z_out, fg, torch.randint(0, 4, (channels,), generator=gen), G, B)


def random_token(gen, channels: int, z: int) -> torch.Tensor:
    """Uniform codes, or codes spread around z by a random width (down to nearly constant)."""
    if torch.rand((), generator=gen) < 0.3:
        return torch.randint(0, 256, (channels,), generator=gen)
    spread = log_uniform(gen, -2, 7)
    return torch.clamp(torch.round(z + spread * torch.randn(channels, generator=gen)), 0, 255).to(torch.int64)


def widths(candidates) -> list[int]:
    return sorted({c for c in candidates if c <= CFG.max_channels} | {CFG.max_channels})


@cocotb.test()
async def random_layers_with_stalls(dut):
    """C = 1, 2, 64, 192, 768 and max_channels: random alpha/G/B/zero points, random token spreads."""
    seed, gen = seeded()
    clock = await start(dut)
    for channels in widths([1, 2, 64, 192, 768]):
        layer = random_layer(gen, channels, f"random C={channels}")
        tokens = [random_token(gen, channels, layer.z) for _ in range(min(8, max(2, 2048 // channels)))]
        await run_layer(dut, clock, layer, tokens, 0.3, seed + channels)


@cocotb.test()
async def extreme_codes_and_parameters(dut):
    """Codes 0/255 with alpha 3 (the largest variance), one outlier (the largest |n|), the extreme
    G (+-2**15, the value +2**15 included), B at the saturating 49-bit limits, fg 0 and 30."""
    seed, gen = seeded()
    c = CFG.max_channels
    alternating = torch.tensor([0, 255]).repeat(c)[:c]
    outlier = torch.zeros(c, dtype=torch.int64)
    outlier[c // 3] = 255
    pick = torch.tensor([2**15, -2**15, 2**15 - 1, 1, 0, -1])
    G = pick[torch.randint(0, len(pick), (c,), generator=gen)]
    beta_pick = torch.tensor([0, 2**48, -2**48, 2**62, -(2**62), 12345678, -987654321])
    B = beta_pick[torch.randint(0, len(beta_pick), (c,), generator=gen)]
    clock = await start(dut)
    for z, fg, z_out in ((0, 30, 0), (128, 0, 255), (255, 14, 77)):
        layer = Layer(f"extremes z {z}", z, z_out, fg, torch.full((c,), 3), G, B)
        tokens = [alternating, 255 - alternating, outlier, 255 - outlier, torch.randint(0, 256, (c,), generator=gen)]
        await run_layer(dut, clock, layer, tokens, 0.3, seed + z)
    # the same codes through a realistic affine map, so the outputs do not all saturate
    layer = random_layer(gen, c, "extremes, random affine")
    layer.alpha[:] = 3
    await run_layer(dut, clock, layer, [alternating, outlier, 255 - outlier], 0.3, seed)


@cocotb.test()
async def zero_variance_tokens(dut):
    """All q = z (X = 0) and all X equal but nonzero: n = 0, so the output is the quantized beta;
    mixed with ordinary tokens so a zero-variance token's R = 0 meets its neighbours' in the pipeline."""
    seed, gen = seeded()
    clock = await start(dut)
    for channels in widths([1, 2, 7]):
        layer = random_layer(gen, channels, f"zero variance C={channels}")
        layer.alpha[:] = int(torch.randint(0, 4, (), generator=gen))
        tokens = [torch.full((channels,), layer.z), torch.full((channels,), (layer.z + 77) % 256),
                  random_token(gen, channels, layer.z), torch.full((channels,), 255), torch.full((channels,), 0)]
        beta_codes = torch.clamp(layer.z_out + round_shift(layer.B, FN + layer.fg), 0, 255)
        assert torch.equal(layer.reference(tokens[:1])[0], beta_codes), "reference: X = 0 must give the quantized beta"
        await run_layer(dut, clock, layer, tokens, 0.3, seed + channels)


def digits_cases() -> list[dict]:
    """Every LayerNorm of the digits model: its parameters, its input codes from the trace [N, C]
    and the traced output; ``tests/test_layernorm_sim.py`` saves them in ``$LAYERNORM_DIGITS``."""
    from sim.vectors import digits_vectors

    im, trace, _ = digits_vectors()
    depth = sum(1 for name in trace if name.endswith(".norm1"))
    norms = [(f"blocks.{i}.norm{j}", f"resid.{2 * i + j - 1}") for i in range(depth) for j in (1, 2)]
    norms.append(("norm", f"resid.{2 * depth}"))
    cases = []
    for name, point in norms:
        channels = trace[point].shape[-1]
        cases.append({"name": name, "z": im.zero(point), "z_out": im.zero(name), "fg": im.i(f"{name}.fg"),
                      "alpha": im.alpha(point, channels).to(torch.int64), "G": im.t(f"{name}.G").to(torch.int64),
                      "B": im.t(f"{name}.B").to(torch.int64),
                      "x": trace[point].reshape(-1, channels).to(torch.int64),
                      "y": trace[name].reshape(-1, channels).to(torch.int64)})
    return cases


# The digits model's LayerNorms as saved by `digits_cases` (loading the model itself inside the
# simulator process takes most of a minute); those wider than max_channels do not run.
DIGITS = torch.load(os.environ["LAYERNORM_DIGITS"], weights_only=True) if "LAYERNORM_DIGITS" in os.environ else []
DIGITS_FITTING = [case for case in DIGITS if case["x"].shape[-1] <= CFG.max_channels]


@cocotb.test(skip=not DIGITS_FITTING)
async def digits_model_layernorms(dut):
    """Every LayerNorm of the digits model on its real inputs, against the trace."""
    seed, _ = seeded()
    clock = await start(dut)
    for index, case in enumerate(DIGITS_FITTING):
        layer = Layer(f"digits {case['name']}", case["z"], case["z_out"], case["fg"], case["alpha"], case["G"],
                      case["B"])
        tokens = list(case["x"])
        assert torch.equal(torch.stack(layer.reference(tokens)), case["y"]), f"{case['name']}: reference != trace"
        # block 0's first norm with stalls, the others at full speed to keep the run short
        await run_layer(dut, clock, layer, tokens, 0.3 if index == 0 else 0.0, seed + index)


@cocotb.test()
async def back_to_back_tokens_of_different_widths(dut):
    """One layer, tokens of random C (1 .. max_channels) back to back, stalled."""
    seed, gen = seeded()
    c = CFG.max_channels
    layer = random_layer(gen, c, "mixed widths")
    rng = random.Random(seed)
    sizes = [1, c, 2, 1, 1, 3] + [rng.choice([1, 2, rng.randint(1, 40), rng.randint(1, c)]) for _ in range(18)]
    tokens = [random_token(gen, min(n, c), layer.z) for n in sizes]
    clock = await start(dut)
    for idle in (0.3, 0.0):
        await run_layer(dut, clock, layer, tokens, idle, seed)


def contiguous(cycles: list[int]) -> bool:
    return cycles == list(range(cycles[0], cycles[0] + len(cycles)))


@cocotb.test()
async def published_latency_and_throughput(dut):
    """Unstalled: parameters one per cycle; a lone token's first output `latency` cycles after its
    last input; one beat per cycle within a token; two tokens of C every `pair_cycles(C)`."""
    seed, gen = seeded()
    clock = await start(dut)
    for channels in widths([1, 2, 5, 24, 100]):
        layer = random_layer(gen, channels, f"timing C={channels}")
        lone = [random_token(gen, channels, layer.z)]
        run = await run_layer(dut, clock, layer, lone, 0.0, seed)
        assert contiguous(run.params.accepted_at), "params not always ready"
        latency = run.out.received_at[0] - run.inp.accepted_at[-1]
        assert latency == CFG.latency, f"C={channels}: first output {latency} cycles after the last input, " \
                                       f"published latency {CFG.latency}"
        tokens = [random_token(gen, channels, layer.z) for _ in range(8)]
        run = await run_layer(dut, clock, layer, tokens, 0.0, seed)
        for t in range(len(tokens)):
            span = slice(t * channels, (t + 1) * channels)
            assert contiguous(run.inp.accepted_at[span]), f"C={channels}: token {t}'s input stalled"
            assert contiguous(run.out.received_at[span]), f"C={channels}: token {t}'s output has gaps"
        first_out = run.out.received_at[::channels]
        pairs = {b - a for a, b in zip(first_out, first_out[2:])}
        assert pairs == {CFG.pair_cycles(channels)}, \
            f"C={channels}: two tokens every {sorted(pairs)} cycles, published {CFG.pair_cycles(channels)}"
