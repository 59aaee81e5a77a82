"""Integer GEMM on 8-bit codes with zero points: the numerical definition the systolic array meets.

``matmul_codes(A, B, za, zb) = (A - za) @ (B - zb)`` computed in int64 and returned as int32. The
result must fit int32 (the array's accumulator width); a product that could overflow is refused
up front rather than wrapped, so hardware and reference can never disagree silently.
"""

import torch

__all__ = ["CodeSpec", "UINT8", "INT8", "matmul_codes", "check_operands", "check_codes", "check_no_overflow"]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class CodeSpec:
    """How an 8-bit code is read: its integer range and whether it is signed."""

    def __init__(self, name: str, signed: bool):
        self.name = name
        self.signed = signed
        self.lo, self.hi = (-128, 127) if signed else (0, 255)

    def __repr__(self):
        return self.name


UINT8 = CodeSpec("uint8", signed=False)
INT8 = CodeSpec("int8", signed=True)


def check_codes(name: str, codes: torch.Tensor, spec: CodeSpec, zero: int) -> None:
    """Raise ValueError naming what is wrong if `codes`/`zero` are not valid `spec` codes."""
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of {spec} codes, got dtype {codes.dtype}")
    if codes.dim() < 2:
        raise ValueError(f"{name} must be a matrix (or a batch of matrices), got shape {tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < spec.lo or int(codes.max()) > spec.hi):
        raise ValueError(
            f"{name} holds values in [{int(codes.min())}, {int(codes.max())}], outside the "
            f"{spec} code range [{spec.lo}, {spec.hi}]"
        )
    if not isinstance(zero, int) or not spec.lo <= zero <= spec.hi:
        raise ValueError(f"{name} zero point must be an integer in [{spec.lo}, {spec.hi}], got {zero!r}")


def check_no_overflow(k: int, a_spec: CodeSpec, za: int, b_spec: CodeSpec, zb: int) -> None:
    """Refuse a reduction length for which some inputs could overflow the int32 accumulator."""
    worst = max(abs(a_spec.lo - za), abs(a_spec.hi - za)) * max(abs(b_spec.lo - zb), abs(b_spec.hi - zb))
    if k * worst > INT32_MAX:
        raise ValueError(
            f"a reduction over K={k} can overflow int32 with these zero points "
            f"(largest product {worst}); K must be at most {INT32_MAX // max(worst, 1)}"
        )


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
