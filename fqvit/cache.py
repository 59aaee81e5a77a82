"""Where the project keeps what it builds: one per-user cache root.

Trained embedded models, exported integer models, test vectors and Verilator builds all live under
``cache_root()``, so a run from any folder finds them. The root is, in order of precedence:
``set_root(path)`` (the CLIs' ``--cache-dir``), ``$FQVIT_CACHE_DIR``, ``$XDG_CACHE_HOME/fqvit-accel``,
``~/.cache/fqvit-accel``. ``python -m sw.cache`` shows its size and clears it.
"""

import os
from pathlib import Path

__all__ = ["ENV_VAR", "cache_root", "set_root"]

ENV_VAR = "FQVIT_CACHE_DIR"


def cache_root() -> Path:
    """The cache root (absolute; not created here)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "fqvit-accel").resolve()


def set_root(path: str | Path) -> Path:
    """Make `path` the cache root for this process and every process it starts (cocotb runs)."""
    os.environ[ENV_VAR] = str(Path(path).expanduser().resolve())
    return cache_root()
