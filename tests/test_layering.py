"""The layering rules and the integer contract's single source of truth.

* Every import statement of the project's packages (module level or inside a function, absolute or
  relative) is checked against the layering rules below.
* Importing ``hw`` and generating the accelerator top's Verilog must not even try to import torch.
* The LIS rule defaults of every layer are the contract's.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fqvit", "hw", "calib", "sim", "sw", "rtl_gen")
TORCH = ("torch", "torchvision", "timm")

# package -> top-level modules it must not import, and why.
FORBIDDEN = {
    "fqvit": ({*PACKAGES, "tests"} - {"fqvit"} | {*TORCH, "numpy", "amaranth"},
              "fqvit is the foundation every layer imports: pure Python, nothing of the project"),
    "hw": ({"calib", "sim", "sw", *TORCH}, "the hardware depends on no reference, testbench, host code or torch"),
    "rtl_gen": ({"calib", "sim", "sw", *TORCH}, "generating Verilog needs the hardware only"),
    "calib": ({"hw", "sim", "sw", "rtl_gen"}, "the reference and calibration know nothing of the hardware side"),
    "sim": ({"sw"}, "the host side (sw) uses the simulator, not the other way round"),
}


def imported_modules(path: Path, root: Path):
    """(line, absolute module name) of every import in `path`, relative imports resolved against
    the file's package under `root`."""
    package = list(path.relative_to(root).parts[:-1])  # of a module and of an __init__.py alike
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module
            # `from pkg import name` may import the submodule pkg.name: check both spellings
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def layering_violations(root: Path, rules: dict = FORBIDDEN) -> list[str]:
    """'file:line: what' for every import that breaks `rules`, in file order."""
    found = []
    for package, (forbidden, why) in rules.items():
        for path in sorted((root / package).rglob("*.py")):
            seen = set()
            for line, module in imported_modules(path, root):
                top = module.split(".")[0]
                if top in forbidden and (line, top) not in seen:
                    seen.add((line, top))
                    found.append(f"{path.relative_to(root)}:{line}: {package} imports {module} ({why})")
    return found


def test_no_package_breaks_the_layering():
    violations = layering_violations(ROOT)
    assert not violations, "forbidden imports:\n" + "\n".join(violations)


def test_the_layering_check_finds_local_and_relative_imports(tmp_path):
    """The checker itself: a function-local import, a relative import that climbs out of its
    package, and `from package import module` are all caught, with file and line."""
    (tmp_path / "hw").mkdir()
    (tmp_path / "hw" / "__init__.py").write_text("")
    (tmp_path / "hw" / "unit.py").write_text("import amaranth\n\n\ndef f():\n    import torch.nn\n")
    (tmp_path / "sim" / "tb").mkdir(parents=True)
    (tmp_path / "sim" / "tb" / "x.py").write_text("from . import common\nfrom ...sw import lanes\n")
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "y.py").write_text("from .intref import softmax\nfrom hw import top\n")
    (tmp_path / "fqvit").mkdir()
    (tmp_path / "fqvit" / "contract.py").write_text("import numpy as np\n")
    found = layering_violations(tmp_path)
    assert [v.split(" (")[0] for v in found] == [
        "fqvit/contract.py:1: fqvit imports numpy",
        "hw/unit.py:5: hw imports torch.nn",
        "calib/y.py:2: calib imports hw",
        "sim/tb/x.py:2: sim imports sw",
    ]


BLOCKED_GENERATE = f"""
import json
import sys

BLOCKED = {TORCH!r}
tried = []


class RefuseTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            tried.append(name)
            raise ImportError(f"{{name}} is unavailable in this test")
        return None


sys.meta_path.insert(0, RefuseTorch())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]

import hw
from hw.top import TopConfig
from rtl_gen import generate_unit

config = TopConfig(rows=2, cols=2, act_kib=1, weight_kib=1, max_channels=64, max_keys=16)
generated = generate_unit("top", config)
print(json.dumps({{
    "module": f"module {{config.name}}(" in generated.verilog,
    "tried": tried,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
}}))
"""


def test_hw_generates_the_top_without_torch():
    result = subprocess.run([sys.executable, "-c", BLOCKED_GENERATE], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"module": True, "tried": [], "loaded": []}


def test_every_default_lis_rule_is_the_contracts():
    from calib.config import QuantConfig
    from fqvit.contract import DEFAULT_LIS_RULE, LIS_RULES
    from hw.softmax import SoftmaxConfig
    from hw.top import TopConfig

    assert DEFAULT_LIS_RULE in LIS_RULES
    assert SoftmaxConfig().rule == TopConfig().softmax_rule == QuantConfig().lis_rule == DEFAULT_LIS_RULE

