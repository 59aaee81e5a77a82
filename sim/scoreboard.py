"""Exact comparison of a hardware tensor with the integer reference, with a readable failure."""

import torch

__all__ = ["assert_bit_exact"]


def assert_bit_exact(what: str, got, want, explain=None, limit: int = 8) -> None:
    """Raise AssertionError unless `got` equals `want` element for element (no tolerance). Either may
    be a torch tensor or a NumPy array (hw.lanes and hw.tiling give the hardware's results as NumPy).

    `explain(index)` may return a string describing the inputs behind one output element; the
    message lists the first `limit` mismatches with it.
    """
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)} from hardware, {tuple(want.shape)} expected")
    wrong = (got != want).nonzero().tolist()
    if not wrong:
        return
    lines = [f"{what}: {len(wrong)} of {want.numel()} elements differ from the integer reference"]
    for index in wrong[:limit]:
        idx = tuple(index)
        line = f"  at {idx}: hardware {int(got[idx])}, reference {int(want[idx])}"
        if explain is not None:
            line += f"; {explain(idx)}"
        lines.append(line)
    raise AssertionError("\n".join(lines))
