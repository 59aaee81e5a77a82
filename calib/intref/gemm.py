"""Integer GEMM on 8-bit codes with zero points: the numerical definition the systolic array meets.

``matmul_codes(A, B, za, zb) = (A - za) @ (B - zb)`` computed in int64 and returned as int32. The
result must fit int32 (the array's accumulator width); a product that could overflow is refused
up front rather than wrapped, so hardware and reference can never disagree silently.
"""

import torch

from fqvit.contract import INT8, UINT8, CodeSpec, check_code_values, check_no_overflow

__all__ = ["CodeSpec", "UINT8", "INT8", "matmul_codes", "check_operands", "check_codes", "check_no_overflow"]


def check_codes(name: str, codes: torch.Tensor, spec: CodeSpec, zero: int) -> None:
    """Raise ValueError naming what is wrong if `codes`/`zero` are not valid `spec` codes."""
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of {spec} codes, got dtype {codes.dtype}")
    if codes.dim() < 2:
        raise ValueError(f"{name} must be a matrix (or a batch of matrices), got shape {tuple(codes.shape)}")
    seen = (int(codes.min()), int(codes.max())) if codes.numel() else (None, None)
    check_code_values(name, *seen, spec, zero)


def check_operands(a: torch.Tensor, b: torch.Tensor, za: int, zb: int, a_spec: CodeSpec, b_spec: CodeSpec) -> None:
    """Everything a GEMM on codes requires of its inputs; ValueError naming the first violation."""
    check_codes("A", a, a_spec, za)
    check_codes("B", b, b_spec, zb)
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"inner dimensions differ: A is {tuple(a.shape)}, B is {tuple(b.shape)}")
    check_no_overflow(a.shape[-1], a_spec, za, b_spec, zb)


def matmul_codes(
    a: torch.Tensor, b: torch.Tensor, za: int = 0, zb: int = 0,
    a_spec: CodeSpec = UINT8, b_spec: CodeSpec = INT8,
) -> torch.Tensor:
    """Exact ``(a - za) @ (b - zb)`` for code matrices a (M x K) and b (K x N), as int32.

    Leading batch dimensions broadcast as in ``torch.matmul`` (attention's per-head products)."""
    check_operands(a, b, za, zb, a_spec, b_spec)
    out = (a.to(torch.int64) - za) @ (b.to(torch.int64) - zb)
    return out.to(torch.int32)
