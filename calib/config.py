"""What a quantization run does: one frozen, validated dataclass."""

from dataclasses import asdict, dataclass

from fqvit.contract import DEFAULT_LIS_RULE, check_lis_rule

__all__ = ["OBSERVER_NAMES", "QuantConfig"]

# The activation observers (calib/observers.py OBSERVERS implements each), named here so that the
# CLIs offer them without importing torch.
OBSERVER_NAMES = ("minmax", "ema", "percentile", "omse")


@dataclass(frozen=True)
class QuantConfig:
    """FQ-ViT post-training quantization settings.

    observer: activation observer (weights are always MinMax, int8 per channel, as in FQ-ViT).
    ptf: Power-of-Two Factor for the LayerNorm inputs (K = 3); without it they are per tensor.
    lis: 4-bit Log-Int-Softmax attention (8/8/4); without it the softmax output is uint8 (8/8/8).
    lis_rule: where a probability rounds to the next power of two: ``nearest`` (the nearer of the
        two powers of two in probability: the unbiased choice, our default; docs/results.md
        compares both) or ``fqvit`` (R >= 1.5 * 2**k, FQ-ViT's log_round, which rounds
        probabilities up more often).
    official: reproduce the official FQ-ViT fake-quant forward and its quirks (weights / 127.5,
        float GELU on the unquantized fc1 output, float bias and residual adds, I-BERT exp with
        n = 30 in float32, FQ-ViT's per-token 8-bit-mantissa LayerNorm, uint8 logits, no input
        quantizer for ViT-B/L). The integer-only reference always follows our contract.
    """

    observer: str = "minmax"
    ptf: bool = True
    lis: bool = True
    lis_rule: str = DEFAULT_LIS_RULE
    official: bool = False

    def __post_init__(self):
        if self.observer not in OBSERVER_NAMES:
            raise ValueError(f"unknown observer {self.observer!r}; expected one of {sorted(OBSERVER_NAMES)}")
        check_lis_rule(self.lis_rule, "lis_rule")
        for name in ("ptf", "lis", "official"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def bits(self) -> str:
        """W/A/Attn bits as the paper writes them."""
        return "8/8/4" if self.lis else "8/8/8"

    def to_dict(self) -> dict:
        return asdict(self)
