"""Developer sessions: `nox -s tests` (fast), `nox -s sim` (Verilator testbenches), `nox -s rtl`,
`nox -s results` (docs/results.md), `nox -s synth` (docs/synthesis.md), `nox -s bench`
(docs/performance.md).

Sessions run in a venv that sees the interpreter's site-packages: torch alone is a 5.5 GB install,
so a session reuses the one already there and installs only what is missing (the project itself,
editable). On a bare interpreter everything is installed into the session's venv instead.
"""

import nox

nox.needs_version = ">=2024.3.2"
nox.options.sessions = ["tests", "sim"]

VENV = {"venv_backend": "venv", "venv_params": ["--system-site-packages"], "reuse_venv": True}


def install(session):
    session.install("-e", ".[test]")


@nox.session(**VENV)
def tests(session):
    """Unit tests, Amaranth-simulator tests and reference checks (no Verilator)."""
    install(session)
    session.run("python", "-m", "pytest", "-m", "not sim", *session.posargs)


@nox.session(**VENV)
def sim(session):
    """cocotb testbenches in Verilator; unchanged RTL reuses its cached build (python -m sw.cache)."""
    install(session)
    session.run("python", "-m", "pytest", "-m", "sim", *session.posargs)


@nox.session(**VENV)
def rtl(session):
    """Write Verilog and manifests (default: the 8x8 array into build/rtl)."""
    install(session)
    session.run("python", "-m", "rtl_gen", *(session.posargs or ["--rows", "8", "--cols", "8", "--out", "build/rtl"]))


@nox.session(**VENV)
def results(session):
    """Regenerate docs/results.md: the digits model under every observer / PTF / LIS setting."""
    install(session)
    session.run("python", "-m", "calib.results", *session.posargs)


@nox.session(**VENV)
def synth(session):
    """Regenerate docs/synthesis.md: ECP5 resources and fmax of every unit and top (native yosys, nextpnr)."""
    session.install("-e", ".[test,synth]")
    session.run("python", "-m", "rtl_gen.synth", *session.posargs)


@nox.session(**VENV)
def bench(session):
    """Regenerate docs/performance.md: utilization, cycles and images/s, simulation speed, calibration time."""
    session.install("-e", ".[test,bench]")
    session.run("python", "-m", "sw.bench", *session.posargs)
