"""Planning new runs: iso-FLOP sets for a budget, and the CPU micro study.

Shapes follow the study's aspect ratio d ≈ 64·L with d a multiple of the head size (64 up to
d = 1024, 128 above). Batch and LR of a run of D tokens come from B* = 10^−2.4·D^0.8225 (rounded
to a power of two in sequences) and η* = 10^−2.06·B^0.3412 at that batch (3 significant digits).
"""

import dataclasses
import math

from dlmjax.scaling import flops, grid, laws


def head_multiple(d_model: int) -> int:
    return 64 if d_model <= 1024 else 128


def shape_for_flops(target_flops_per_token: float, seq_len: int = grid.SEQ_LEN, *,
                    aspect: float = 64.0, max_layers: int = 256) -> tuple[int, int]:
    """(L, d) with d ≈ aspect·L whose M = 72Ld² + 12LdS is closest to the target in log."""
    if not target_flops_per_token > 0:
        raise ValueError(f"target_flops_per_token must be positive, got {target_flops_per_token}")
    best, best_err = None, math.inf
    for num_layers in range(1, max_layers + 1):
        d_raw = aspect * num_layers
        mult = head_multiple(int(d_raw))
        d_model = max(mult, mult * round(d_raw / mult))
        m = flops.flops_per_token(num_layers, d_model, seq_len)
        err = abs(math.log(m / target_flops_per_token))
        if err < best_err:
            best, best_err = (num_layers, d_model), err
    return best


def round_batch(tokens_per_batch: float, seq_len: int) -> int:
    """Power of two (sequences) nearest in log to the given batch in tokens."""
    return 2 ** max(0, round(math.log2(tokens_per_batch / seq_len)))


def round_lr(lr: float) -> float:
    return float(f"{lr:.3g}")


def hyperparameters_for(tokens: float, seq_len: int = grid.SEQ_LEN) -> tuple[int, float]:
    """(batch in sequences, peak LR) from the B* and η* laws for a run of `tokens` tokens."""
    batch = round_batch(laws.optimal_batch_tokens(tokens), seq_len)
    return batch, round_lr(laws.optimal_lr(batch * seq_len))


@dataclasses.dataclass(frozen=True)
class IsoFlopPlan:
    compute: float
    noise: str
    predicted: dict             # law values at C: M, D, L
    points: tuple               # GridPoints, smallest model first


def plan_iso_flop(compute: float, noise: str, *, num_sizes: int = 5, spread: float = 2.0,
                  seq_len: int = grid.SEQ_LEN, vocab_size: int = grid.VOCAB_SIZE,
                  law: dict | None = None) -> IsoFlopPlan:
    """Runs of equal compute C around the law's M*(C): model sizes M*·spread^k centred on k = 0.

    Each run trains D = C/M tokens (whole steps) with batch and LR from the hyperparameter laws.
    """
    if not compute > 0:
        raise ValueError(f"compute must be positive, got {compute}")
    if num_sizes < 3:
        raise ValueError(f"num_sizes must be at least 3 for a parabola, got {num_sizes}")
    if not spread > 1:
        raise ValueError(f"spread must exceed 1, got {spread}")
    law = law if law is not None else laws.compute_optimal_law(noise)
    m_star = law["M"](compute)
    shapes = []
    for k in range(num_sizes):
        target = m_star * spread ** (k - (num_sizes - 1) / 2)
        shape = shape_for_flops(target, seq_len)
        if shape not in shapes:
            shapes.append(shape)
    points = []
    for num_layers, d_model in shapes:
        tokens = compute / flops.flops_per_token(num_layers, d_model, seq_len)
        batch, lr = hyperparameters_for(tokens, seq_len)
        steps = max(1, round(tokens / (batch * seq_len)))
        points.append(grid.GridPoint(noise, num_layers, d_model, batch, lr,
                                     steps * batch * seq_len, seq_len, vocab_size))
    points.sort(key=lambda p: p.flops_per_token)
    return IsoFlopPlan(compute, noise, {k: law[k](compute) for k in ("M", "D", "L")},
                       tuple(points))


# ---------------------------------------------------------------------------------------------
# CPU micro study: 3 sizes × 3 budgets × {masked, uniform}.

MICRO_SIZES = ((2, 32), (2, 64), (4, 64))


@dataclasses.dataclass(frozen=True)
class MicroPlan:
    budgets: tuple              # FLOP budgets C (non-embedding, deepseek) read off every curve
    predicted_m: tuple          # predicted M*(C) per budget, inside the sizes' range
    points: tuple               # one run per (noise, size), each long enough for max(budgets)
    total_flops: float          # all runs, embeddings included (what the CPU will spend)


def plan_micro_study(budgets=None, *, sizes=MICRO_SIZES, noise_types=("masked", "uniform"),
                     seq_len: int = 128, vocab_size: int = 256, batch: int = 16,
                     lr: float = 0.1, tokens_per_flop: float = 1.0,
                     margin: float = 1.1) -> MicroPlan:
    """A CPU-sized iso-FLOP study whose predicted optimum lies inside the size range.

    No cooldown, so each (noise, size) trains once, to margin × the largest budget, and the
    report reads each budget off the loss curves. The published laws, extrapolated ten orders
    of magnitude down, put M* below any trainable model at CPU budgets; the prior used here is
    instead a fixed ratio r = D*/M* (tokens per FLOP-per-token at the optimum), so
    M*(C) = √(C/r). r ≈ 3 would be the Chinchilla rule D = 20P with M ≈ 6P; the default r = 1
    (D ≈ 7P for these shapes) keeps the whole study near 7e12 FLOPs; the CPU cost grows ∝ r.
    Default budgets put M* at 1/4, 1/2 and 3/4 of the sizes' log-range of M. Batch and LR are
    fixed (the B*/η* laws mean nothing at this scale).

    The trainer must log often (≥ ~250 records per run: the EMA spans 1/(1 − γ) = 25 records
    and the curve fit skips the first 10% of steps) and use a warm-up that is short next to
    the shortest run (the fit also skips optim.warmup_steps).
    """
    m_sizes = sorted(flops.flops_per_token(l, d, seq_len) for l, d in sizes)
    if len(m_sizes) < 3:
        raise ValueError(f"sizes needs at least 3 shapes, got {sizes}")
    lo, hi = math.log(m_sizes[0]), math.log(m_sizes[-1])
    if budgets is None:
        budgets = tuple(tokens_per_flop * math.exp(lo + f * (hi - lo)) ** 2
                        for f in (0.25, 0.5, 0.75))
    budgets = tuple(float(c) for c in sorted(budgets))
    predicted = tuple(math.sqrt(c / tokens_per_flop) for c in budgets)
    for c, m in zip(budgets, predicted):
        if not m_sizes[0] < m < m_sizes[-1]:
            raise ValueError(f"budget {c:.3g}: predicted M* = {m:.3g} lies outside the sizes' "
                             f"range [{m_sizes[0]:.3g}, {m_sizes[-1]:.3g}]; change budgets/sizes")
    points, total = [], 0.0
    for noise in noise_types:
        for num_layers, d_model in sizes:
            m = flops.flops_per_token(num_layers, d_model, seq_len)
            steps = math.ceil(margin * budgets[-1] / (m * batch * seq_len))
            point = grid.GridPoint(noise, num_layers, d_model, batch, lr,
                                   steps * batch * seq_len, seq_len, vocab_size)
            points.append(point)
            total += point.train_tokens * flops.flops_per_token(
                num_layers, d_model, seq_len, include_embeddings=True, vocab_size=vocab_size)
    return MicroPlan(budgets, predicted, tuple(points), total)
