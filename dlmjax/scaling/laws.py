"""The study's published laws as data (docs/science.md): y = A·x^α.

Hyperparameter laws take B and D in tokens. Compute-optimal laws take C = M·D in FLOPs
(deepseek convention, non-embedding) and give M* (FLOPs/token), D* (tokens) and L* (ELBO,
nats/token, no cooldown). A masked and a uniform law are published; `compute_optimal_law` also
serves the hybrid noise types by interpolating the exponents and log-prefactors (a planning
heuristic, not a published result).
"""

import dataclasses
import math

NOISE_TYPES = ("masked", "low_uniform", "balanced", "high_uniform", "uniform")


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = A·x^alpha."""

    A: float
    alpha: float

    def __call__(self, x):
        return self.A * x**self.alpha

    def inverse(self, y):
        """x with A·x^alpha = y."""
        return (y / self.A) ** (1.0 / self.alpha)


BATCH_LAW = PowerLaw(10**-2.4, 0.8225)      # B*(D), both in tokens
LR_LAW = PowerLaw(10**-2.06, 0.3412)        # η*(B), B in tokens

COMPUTE_OPTIMAL_LAWS = {
    "masked": {"M": PowerLaw(0.01761, 0.5663), "D": PowerLaw(56.79, 0.4337),
               "L": PowerLaw(27.22, -0.0496)},
    "uniform": {"M": PowerLaw(0.00618, 0.5888), "D": PowerLaw(161.9, 0.4112),
                "L": PowerLaw(31.26, -0.0522)},
}

# Weight of the uniform law for the hybrid types: σ(b), the uniform share of π at λ = 0.
_UNIFORM_WEIGHT = {"masked": 0.0, "low_uniform": 1 / (1 + math.e**2), "balanced": 0.5,
                   "high_uniform": 1 / (1 + math.e**-2), "uniform": 1.0}


def compute_optimal_law(noise_type: str) -> dict:
    """{"M", "D", "L"} power laws in C for a noise type (hybrids interpolated, see module doc)."""
    if noise_type not in _UNIFORM_WEIGHT:
        raise ValueError(f"unknown noise type {noise_type!r}; expected one of {NOISE_TYPES}")
    if noise_type in COMPUTE_OPTIMAL_LAWS:
        return COMPUTE_OPTIMAL_LAWS[noise_type]
    w = _UNIFORM_WEIGHT[noise_type]
    masked, uniform = COMPUTE_OPTIMAL_LAWS["masked"], COMPUTE_OPTIMAL_LAWS["uniform"]
    return {
        k: PowerLaw(math.exp((1 - w) * math.log(masked[k].A) + w * math.log(uniform[k].A)),
                    (1 - w) * masked[k].alpha + w * uniform[k].alpha)
        for k in ("M", "D", "L")
    }


def optimal_batch_tokens(tokens):
    """B* = 10^−2.4·D^0.8225 (tokens)."""
    return BATCH_LAW(tokens)


def optimal_lr(batch_tokens):
    """η* = 10^−2.06·B^0.3412 (B in tokens)."""
    return LR_LAW(batch_tokens)


def compute_optimal(compute, noise_type: str) -> dict:
    """M*, D*, L* at compute C for a noise type."""
    law = compute_optimal_law(noise_type)
    return {k: law[k](compute) for k in ("M", "D", "L")}
