"""Validation shared by the units' config dataclasses."""

__all__ = ["check_int", "check_bool"]


def check_int(unit: str, name: str, value, lo: int, hi: int) -> None:
    """Raise ValueError naming the unit, the parameter, its range and the bad value."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{unit} {name} must be an integer in {lo}..{hi}, got {value!r}")


def check_bool(unit: str, name: str, value) -> None:
    """Raise ValueError naming the unit and the parameter unless `value` is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{unit} {name} must be True or False, got {value!r}")
