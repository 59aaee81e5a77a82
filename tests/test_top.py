"""The accelerator top's configuration and the compiler's checks, without a simulator."""

import dataclasses
import json

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from calib.config import QuantConfig
from calib.data import synthetic_data
from calib.intref import vit
from calib.intref.blocks import REF
from calib.pipeline import calibrate, quantize_model
from hw.top import Accelerator, Op, TopConfig
from rtl_gen import generate
from hw.payload import PayloadCodec
from sw import driver
from sw.compiler import CompileError, Compiler


def tiny_vit_model(tmp_path, cfg=QuantConfig(lis_rule="nearest")):
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2,
                              num_heads=2, mlp_ratio=2, qkv_bias=True).eval()
    data = synthetic_data(model, calib_images=4, images=2, batch_size=2)
    sim = calibrate(model, cfg, data, progress=False)
    im = quantize_model(model, sim, "tiny", tmp_path / "m.fqvit.safetensors")
    codes = im.quantize_input(next(iter(data.test))[0])
    return im, codes


@pytest.mark.parametrize("fields, message", [
    ({"rows": 0}, "top rows must be an integer in 1..32, got 0"),
    ({"cols": 33}, "top cols must be an integer in 1..32, got 33"),
    ({"act_kib": 0}, "top act_kib"),
    ({"max_keys": 5000}, "top max_keys"),
    ({"attnv_lanes": 65}, "top attnv_lanes must be an integer in 1..64, got 65"),
    ({"softmax_rule": "round"}, "rule"),
])
def test_config_is_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        TopConfig(**fields)


def test_top_generates_with_its_ports_and_command_layout():
    cfg = TopConfig(rows=4, cols=6)
    g = generate(Accelerator(cfg), "top", cfg.timing())
    ports = {p["name"]: p["width"] for p in g.manifest["ports"]}
    assert ports["cmd__payload"] == cfg.cmd_layout.size
    assert ports["din__payload"] == cfg.din_width and ports["dout__payload"] == cfg.dout_width
    assert f"module {cfg.name}(" in g.verilog
    # the command codec round-trips an enum-valued command
    codec = PayloadCodec(cfg.cmd_layout)
    word = Compiler(cfg).encode_commands([{"op": Op.MATMUL, "k": 17, "tiles": 3, "a_zero": -5}])
    back = codec.decode(word)
    assert back["op"][0] == Op.MATMUL.value and back["k"][0] == 17 and back["a_zero"][0] == -5


def test_the_forward_runs_the_listed_ops(tmp_path):
    """calib.intref.vit.op_sequence (what sw/bench.py's analytic model counts) is the forward's order
    of ops, whole and for a first block only."""
    im, codes = tiny_vit_model(tmp_path)

    class Recorder:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            self.calls.append(name)
            return getattr(REF, name)

    for depth, head in ((im.config["depth"], True), (1, False)):
        ops = Recorder()
        vit.forward(im, codes, ops=ops, depth=depth)
        assert tuple(ops.calls) == vit.op_sequence(depth, head)


def test_the_bench_extrapolates_a_whole_model_from_its_first_block():
    """sw/bench.py's analytic model, on a log whose op costs are known: pre + depth x block + the
    final LayerNorm + the head is the whole forward's sum."""
    from sw.bench import extrapolate

    cost = {"linear": 50, "add": 3, "layernorm": 7, "attention": 11}
    first_block = {"log": [(op, cost[op]) for op in vit.op_sequence(1, head=False)], "full_depth": 12}
    assert extrapolate(first_block, head_cycles=cost["linear"]) == sum(cost[op] for op in vit.op_sequence(12))


def test_plan_checks_every_op_against_the_buffers(tmp_path):
    im, codes = tiny_vit_model(tmp_path)
    ok = driver.top_config(im, 4, 6)
    assert ok.softmax_rule == im.lis_rule == "nearest"
    # the top's rule is the file's, by name
    assert driver.top_config(dataclasses.replace(im, quant={**im.quant, "lis_rule": "fqvit"}), 4, 6).softmax_rule == "fqvit"
    reference, ops = driver.plan(im, codes, ok, im.config["depth"])
    assert ops == len(vit.op_sequence(im.config["depth"]))
    # PlanOps returns the reference's results by design; what the plan itself does is compile
    # every op, so its matmul work must be the model's, counted here from the model's dimensions.
    c = im.config
    b, t, d, hidden = codes.shape[0], c["tokens"], c["embed_dim"], c["mlp_hidden"]
    patch = c["in_chans"] * c["patch_size"][0] * c["patch_size"][1]
    block = t * d * (3 * d + d + hidden) + t * hidden * d  # qkv, proj, fc1; fc2
    head = d * c["num_classes"]  # the class token only
    assert reference.stats["linear"]["macs"] == b * ((t - 1) * patch * d + c["depth"] * block + head)
    # Q.K^T and attention x V, heads x head_dim = embed_dim each
    assert reference.stats["attention"]["macs"] == b * c["depth"] * 2 * t * t * d
    with pytest.raises(CompileError, match="does not fit the activation buffer"):
        driver.plan(im, codes, TopConfig(32, 8, act_kib=1, softmax_rule="nearest"), 2)  # 32 words < K = 48
    with pytest.raises(CompileError, match="does not fit the weight buffer"):
        driver.plan(im, codes, TopConfig(8, 32, weight_kib=1, softmax_rule="nearest"), 2)  # 32 words < K = 48
    with pytest.raises(CompileError, match="exceed the requantizer's max_channels"):
        driver.plan(im, codes, TopConfig(8, 8, max_channels=64, softmax_rule="nearest"), 2)  # qkv: 96
    with pytest.raises(CompileError, match="exceed max_keys"):
        driver.plan(im, codes, TopConfig(8, 8, max_keys=8, softmax_rule="nearest"), 2)  # 17 keys
    with pytest.raises(CompileError, match=r"heads of 16 channels exceed attention x V's 8 lanes"):
        driver.plan(im, codes, TopConfig(8, 8, attnv_lanes=8, softmax_rule="nearest"), 2)  # embed 32, 2 heads
    with pytest.raises(CompileError, match="LIS rule"):
        driver.plan(im, codes, TopConfig(8, 8, softmax_rule="fqvit"), 2)
    with pytest.raises(CompileError, match=r"images are \(3, 8, 8\)"):
        driver.plan(im, codes[:, :, :8, :8], ok, 2)


def test_models_the_hardware_cannot_run_are_refused(tmp_path):
    im, _ = tiny_vit_model(tmp_path, QuantConfig(lis=False))
    with pytest.raises(CompileError, match="LIS softmax only"):
        driver.top_config(im, 8, 8)


def test_compare_counts_every_differing_element():
    ref = {"a": torch.arange(6).reshape(2, 3), "b": torch.zeros(4, dtype=torch.int32)}
    got = {"a": ref["a"].clone(), "b": ref["b"].clone()}
    assert sum(t["mismatches"] for t in driver.compare(ref, got).values()) == 0
    got["a"][1, 2] += 1
    got["b"] = got["b"][:3]
    report = driver.compare(ref, got)
    assert report["a"]["mismatches"] == 1 and report["b"]["mismatches"] == 4  # a wrong shape counts in full
    assert driver.compare(ref, {"a": ref["a"]})["b"]["mismatches"] == 4  # so does a missing tensor


def test_linear_program_accounting(tmp_path):
    """One weight load per chunk of tiles, one slab load and MATMUL per R tokens, one result word
    per token and tile."""
    cfg = TopConfig(4, 6, weight_kib=1, softmax_rule="nearest")  # 170 words: 3 tiles of K = 48 per load
    x = torch.randint(0, 256, (10, 48))
    w = torch.randint(-128, 128, (20, 48))
    prog = Compiler(cfg).linear(x, w, 3, None, torch.full((20,), 1 << 15), torch.full((20,), 20), 0, False)
    ops = [c["op"] for c in prog.commands]
    assert ops.count(Op.LOAD_WEIGHT) == 2 and ops.count(Op.MATMUL) == 2 * 3  # tiles 0-2, 3; slabs 4+4+2
    assert prog.out_words == 10 * 4 and prog.macs == 10 * 20 * 48
    assert prog.array_beats == 3 * (3 * 48) + 3 * 48

    # host link bytes: the weights (4 tiles of 6 channels x 48, padded) and the requantizer's 20
    # channel parameters; each slab (48 words of 4 codes) once per weight load; each result an
    # epilogue row (6 int32 lanes, 6 GELU codes, keep and last); one command word each
    compiler = Compiler(cfg)
    link = compiler.link_bytes(prog)
    param_bytes = -(-cfg.units()["requant"].param_layout.size // 8)
    assert link == {"program": len(prog.commands) * -(-cfg.cmd_layout.size // 8),
                    "weights": 4 * 6 * 48 + 20 * param_bytes, "data_in": 2 * 3 * 48 * 4,
                    "data_out": 10 * 4 * -(-cfg.epilogue_layout.size // 8)}


def run_on_pysim(dut, cmds: list[int], din: list[int], out_words: int, seed: int, p_din: float, p_ready: float,
                 check=lambda ctx: None) -> list[tuple[int, int]]:
    """A program through the top in Amaranth's simulator, a host with random gaps in the data
    (`p_din`: chance a word is offered) and random back-pressure (`p_ready`); `check(ctx)` every
    cycle. Returns the result words with the cycle each was taken in."""
    import random

    from amaranth.sim import Simulator

    rng, got = random.Random(seed), []

    async def bench(ctx):
        c = d = cycle = idle = 0
        while len(got) < out_words:
            assert idle < 2000, f"no progress: {len(got)} of {out_words} words"
            ctx.set(dut.cmd.valid, c < len(cmds))
            ctx.set(dut.cmd.payload.as_value(), cmds[c] if c < len(cmds) else 0)
            ctx.set(dut.din.valid, d < len(din) and rng.random() < p_din)
            ctx.set(dut.din.payload, din[d] if d < len(din) else 0)
            ctx.set(dut.dout.ready, rng.random() < p_ready)
            check(ctx)
            c += ctx.get(dut.cmd.valid) and ctx.get(dut.cmd.ready)
            d += ctx.get(dut.din.valid) and ctx.get(dut.din.ready)
            idle += 1
            if ctx.get(dut.dout.valid) and ctx.get(dut.dout.ready):
                got.append((cycle, ctx.get(dut.dout.payload)))
                idle = 0
            cycle += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("rows,cols", [(2, 3), (1, 2)], ids=["2x3", "1x2"])
def test_matmul_never_offers_the_array_a_beat_it_cannot_take(rows, cols, monkeypatch):
    """The MATMUL issue feeds the array without a handshake, applying the array's own rules for a
    tile's `last` beat before the read (hw.top; SystolicConfig.max_claimed). In Amaranth's
    simulator, with the host taking results at random (the array's result FIFO fills up), the
    array's `ready` is high whenever a beat reaches it, and the results equal those of a run
    whose host takes every word at once (R = 1: tiles end back to back)."""
    import hw.top

    arrays = []

    class Recorded(hw.top.SystolicArray):
        def __init__(self, *args):
            super().__init__(*args)
            arrays.append(self)

    monkeypatch.setattr(hw.top, "SystolicArray", Recorded)
    cfg = TopConfig(rows, cols, act_kib=1, weight_kib=1, max_channels=128, max_keys=16, softmax_rule="nearest")
    gen = torch.Generator().manual_seed(rows)
    # K = 2: tiles shorter than the array's 2R - 1 spacing; 120 channels: one MATMUL gives more
    # result rows than the array's FIFO and the epilogue's hold while the host is slow
    x, w = torch.randint(0, 256, (4, 2), generator=gen), torch.randint(-128, 128, (120, 2), generator=gen)
    compiler = Compiler(cfg)
    prog = compiler.linear(x, w, 3, None, torch.full((120,), 1 << 15), torch.full((120,), 20), 0, False)
    cmds = compiler.encode_commands(prog.commands)

    def run(p_ready: float) -> list[int]:
        dut = Accelerator(cfg)
        arrays.clear()

        def check(ctx):
            array = arrays[0]
            assert not ctx.get(array.operands.valid) or ctx.get(array.operands.ready)

        return [word for _, word in run_on_pysim(dut, cmds, prog.din, prog.out_words, rows, 1.0, p_ready, check)]

    assert run(0.05) == run(1.0)


def test_shared_lanes_give_the_words_of_the_full_rate_top():
    """With no DSP budget the requantizer's and the residual adder's products are in LUTs, and each
    takes a beat every other cycle on 4 lanes shared by 6 columns (hw/share.py). In Amaranth's
    simulator, with gaps in the data and random back-pressure, a MATMUL with K = 2 (tiles shorter
    than the shared requantizer needs) and a residual add give the words of the top with DSP blocks."""
    full = TopConfig(2, 6, act_kib=1, weight_kib=1, max_channels=128, max_keys=16, softmax_rule="nearest")
    shared = dataclasses.replace(full, dsp_budget=0)
    assert [shared.units()[unit].share for unit in ("requant", "residual")] == [2, 2]
    gen = torch.Generator().manual_seed(6)
    compiler = Compiler(full)
    x, w = torch.randint(0, 256, (5, 2), generator=gen), torch.randint(-128, 128, (20, 2), generator=gen)
    a, b = torch.randint(0, 256, (5, 20), generator=gen), torch.randint(0, 256, (5, 20), generator=gen)
    progs = [compiler.linear(x, w, 3, None, torch.full((20,), 1 << 15), torch.full((20,), 20), 0, False),
             compiler.add(a, 3, torch.full((20,), 900), b, 5, torch.full((20,), 700), 10, 2)]
    cmds = compiler.encode_commands([c for p in progs for c in p.commands])
    din = [word for p in progs for word in p.din]
    out_words = sum(p.out_words for p in progs)

    def words(cfg: TopConfig, p_din: float, p_ready: float) -> list[int]:
        return [word for _, word in run_on_pysim(Accelerator(cfg), cmds, din, out_words, 2, p_din, p_ready)]

    assert words(shared, 0.7, 0.3) == words(full, 1.0, 1.0)


def test_gated_unit_clocks_change_no_result_and_no_cycle():
    """Simulation builds run each unit on a clock gated off while no command uses it
    (Accelerator(gate_idle_units=True), what sw/driver.build_sim compiles). In Amaranth's
    simulator, a program of params, weight loads, MATMULs, a residual add and an attention head
    (the chain, the softmax and attention x V), with gaps in the data and random back-pressure on
    the results, gives the same words in the same cycles as on the ungated top."""
    cfg = TopConfig(2, 3, act_kib=1, weight_kib=1, max_channels=128, max_keys=16, attnv_lanes=4,
                    softmax_rule="nearest")
    gen = torch.Generator().manual_seed(1)
    compiler = Compiler(cfg)
    x, w = torch.randint(0, 256, (5, 7), generator=gen), torch.randint(-128, 128, (8, 7), generator=gen)
    a, b = torch.randint(0, 256, (5, 8), generator=gen), torch.randint(0, 256, (5, 8), generator=gen)
    progs = [compiler.linear(x, w, 3, None, torch.full((8,), 1 << 15), torch.full((8,), 20), 0, False),
             compiler.add(a, 3, torch.full((8,), 900), b, 5, torch.full((8,), 700), 10, 2),
             compiler.attention(*(torch.randint(0, 256, (1, 5, 4), generator=gen) for _ in range(3)), 100,
                                (20000, 22, 128), torch.randint(0, 1 << 15, (256,), generator=gen),
                                cfg.units()["softmax"].num_den, None, (20000, 30, 120))]
    cmds = compiler.encode_commands([c for p in progs for c in p.commands])
    din = [word for p in progs for word in p.din]
    out_words = sum(p.out_words for p in progs)

    def run(gated: bool) -> list[tuple[int, int]]:
        return run_on_pysim(Accelerator(cfg, gate_idle_units=gated), cmds, din, out_words, 0, 0.7, 0.3)

    assert run(gated=True) == run(gated=False)


def test_the_sim_backends_top_verilog_is_generated_once_per_source_config_and_target(monkeypatch, tmp_path):
    """sw.driver.top_verilog caches the generated top: a second run with nothing changed reads it
    back, while another configuration, another target or an edited generator source generates anew."""
    monkeypatch.setenv("FQVIT_CACHE_DIR", str(tmp_path / "cache"))
    package = tmp_path / "src" / "fake_generator"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setattr(driver, "_GENERATOR_PACKAGES", (*driver._GENERATOR_PACKAGES, "fake_generator"))
    generated = []
    real_generate = driver.generate
    monkeypatch.setattr(driver, "generate", lambda *args, **kw: generated.append(args[3]) or real_generate(*args, **kw))
    small = TopConfig(2, 2, act_kib=1, weight_kib=1, max_channels=16, max_keys=16)
    first = driver.top_verilog(small, "generic", True)
    assert driver.top_verilog(small, "generic", True) == first and generated == ["generic"]
    # the simulation build gates idle units' clocks and builds each FIFO as one slice
    assert "gated_clk" in first and "dout_fifo.slice_0" in first and "dout_fifo.slice_1" not in first
    synthesized = driver.top_verilog(small, "ecp5", False)
    assert "gated_clk" not in synthesized and "dout_fifo.slice_1" in synthesized and generated == ["generic", "ecp5"]
    driver.top_verilog(dataclasses.replace(small, max_keys=32), "generic", True)
    (package / "__init__.py").write_text("X = 2\n")
    assert driver.top_verilog(small, "generic", True) == first and len(generated) == 4


def test_host_link_bytes_split_the_input_and_the_output_from_the_activations():
    """The first program's loads are the image, the last one's results the logits (whole runs only);
    everything else that crosses in either direction is activations."""
    traffic = [{"program": 1, "weights": 10, "data_in": 100, "data_out": 7},
               {"program": 2, "weights": 20, "data_in": 30, "data_out": 40},
               {"program": 3, "weights": 30, "data_in": 5, "data_out": 9}]
    assert driver.host_link_bytes(traffic, whole=True) == {"program": 6, "input": 100, "weights": 60,
                                                           "activations": 7 + 30 + 40 + 5, "output": 9}
    assert driver.host_link_bytes(traffic, whole=False)["activations"] == 7 + 30 + 40 + 5 + 9


def test_the_bench_quotes_only_the_clock_of_the_top_it_runs(monkeypatch, tmp_path):
    """images/s use the fmax of the default top's own row in the synthesis report; an older top's
    row of the same array size does not count."""
    import rtl_gen.synth
    from sw.bench import ARRAY, fmax_of_top

    report = tmp_path / "synthesis.json"
    monkeypatch.setattr(rtl_gen.synth, "DEFAULT_JSON", str(report))
    rows = [{"unit": "top", "top": "fqvit_top_8x8_00000000", "config": {"rows": 8, "cols": 8}, "fmax_mhz": 99.0}]
    report.write_text(json.dumps(rows))
    assert fmax_of_top()[0] is None
    rows.append({**rows[0], "top": TopConfig(*ARRAY).name, "fmax_mhz": 123.4})
    report.write_text(json.dumps(rows))
    assert fmax_of_top()[0] == 123.4
