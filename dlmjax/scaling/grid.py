"""The study's run grid as data, and string keys that address any run.

The design doc fixes the grid's shape (5 sizes × 5 noise types × batch {8 … 512} sequences × 2–3
learning rates = 510 runs, S = 2048, V = 131072, no cooldown) but not the per-size batch and LR
lists. Ours is built so that it is consistent with that shape and with the η* law:

- batches are the seven powers of two 8, 16, …, 512 sequences for every size and noise type;
- learning rates come from a fixed ladder of round values (LR_LADDER, steps of ×1.4–1.7); for a
  batch of B tokens the three rungs around η*(B) = 10^−2.06·B^0.3412 are run: the rung nearest to
  η* in log and its two neighbours (batch 64 → 0.3, 0.5, 0.7; η* = 0.49);
- the batch-8 runs of the three largest sizes (L12-D768, L16-D1024, L20-D1536) run only the two
  rungs that bracket η* (0.2, 0.3; η* = 0.24): they are the longest runs in steps and lie
  furthest below B*, so they get two runs instead of three.
Per noise type: 5·7·3 − 3 = 102 runs, 510 in all.

Run length (not published either): no cooldown, so a run serves every FLOP budget it passes.
A run trains until the earlier of (a) `overshoot` × the tokens D* at which its size is
compute-optimal under the masked law, so that the iso-FLOP budgets around every size's optimum are
covered on both sides, and (b) `horizon` × the tokens for which its batch is optimal,
D_B = (B/10^−2.4)^(1/0.8225): beyond that the batch is too small to be the optimum of any budget,
and small-batch runs would otherwise need millions of steps.

A key names one run: "noise=uniform,size=L12-D768,batch=64,lr=0.3". Optional fields tokens=,
seq=, vocab= appear only when they differ from the study's defaults (planned runs set tokens).
"""

import dataclasses
import math
import re

from dlmjax.scaling import flops, laws

SEQ_LEN = 2048
VOCAB_SIZE = 131072
STUDY_SIZES = ((8, 512), (10, 640), (12, 768), (16, 1024), (20, 1536))
STUDY_BATCHES = (8, 16, 32, 64, 128, 256, 512)
LR_LADDER = (0.01, 0.015, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0,
             3.0, 5.0, 7.0, 10.0)
TWO_LR_SIZES = ((12, 768), (16, 1024), (20, 1536))   # at batch 8 only
TWO_LR_BATCH = 8
OVERSHOOT = 4.0
HORIZON = 16.0

_SIZE_RE = re.compile(r"^L(\d+)-D(\d+)$")
_KEY_FIELDS = ("noise", "size", "batch", "lr", "tokens", "seq", "vocab")


def size_name(num_layers: int, d_model: int) -> str:
    return f"L{num_layers}-D{d_model}"


def parse_size(size) -> tuple[int, int]:
    """"L12-D768" or (12, 768) -> (12, 768)."""
    if isinstance(size, str):
        match = _SIZE_RE.match(size)
        if not match:
            raise ValueError(f"size {size!r} is not of the form 'L<layers>-D<d_model>'")
        num_layers, d_model = int(match.group(1)), int(match.group(2))
    else:
        num_layers, d_model = (int(v) for v in size)
    if num_layers <= 0 or d_model <= 0:
        raise ValueError(f"size {size!r} needs positive layers and d_model")
    return num_layers, d_model


def _format_float(x: float) -> str:
    text = repr(float(x))   # shortest string that parses back to the same float
    return text[:-2] if text.endswith(".0") else text


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One training run: noise type, model shape, batch (sequences), peak LR and run length."""

    noise: str
    num_layers: int
    d_model: int
    batch: int
    lr: float
    tokens: int | None = None   # None: the study grid's run-length rule
    seq_len: int = SEQ_LEN
    vocab_size: int = VOCAB_SIZE

    def __post_init__(self):
        if self.noise not in laws.NOISE_TYPES:
            raise ValueError(f"noise {self.noise!r} is not one of {laws.NOISE_TYPES}")
        for name in ("num_layers", "d_model", "batch", "seq_len", "vocab_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.tokens is not None and self.tokens <= 0:
            raise ValueError(f"tokens must be positive, got {self.tokens!r}")

    @property
    def size(self) -> str:
        return size_name(self.num_layers, self.d_model)

    @property
    def key(self) -> str:
        parts = [f"noise={self.noise}", f"size={self.size}", f"batch={self.batch}",
                 f"lr={_format_float(self.lr)}"]
        if self.tokens is not None:
            parts.append(f"tokens={self.tokens}")
        if self.seq_len != SEQ_LEN:
            parts.append(f"seq={self.seq_len}")
        if self.vocab_size != VOCAB_SIZE:
            parts.append(f"vocab={self.vocab_size}")
        return ",".join(parts)

    @property
    def params(self) -> int:
        return flops.non_embedding_params(self.num_layers, self.d_model)

    @property
    def flops_per_token(self) -> float:
        return flops.flops_per_token(self.num_layers, self.d_model, self.seq_len)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq_len

    @property
    def train_tokens(self) -> int:
        """Tokens the run trains on, rounded up to whole steps."""
        return self.steps * self.tokens_per_step

    @property
    def steps(self) -> int:
        tokens = self.tokens if self.tokens is not None else study_run_tokens(
            self.num_layers, self.d_model, self.batch, self.seq_len)
        return max(1, math.ceil(tokens / self.tokens_per_step))

    @property
    def compute(self) -> float:
        """C = M·D of the whole run (non-embedding, deepseek convention)."""
        return self.flops_per_token * self.train_tokens

    def config_overrides(self) -> dict:
        """Dotted config keys for the trainer's experiment config."""
        return {
            "model.num_layers": self.num_layers, "model.d_model": self.d_model,
            "model.seq_len": self.seq_len, "model.vocab_size": self.vocab_size,
            "noise.type": self.noise, "train.batch_size": self.batch, "optim.lr": self.lr,
            "train.steps": self.steps,
        }


def study_run_tokens(num_layers: int, d_model: int, batch: int, seq_len: int = SEQ_LEN, *,
                     overshoot: float = OVERSHOOT, horizon: float = HORIZON) -> float:
    """Run length of the study grid (module doc): min(overshoot·D*(size), horizon·D_B(batch))."""
    m = flops.flops_per_token(num_layers, d_model, seq_len)
    law = laws.COMPUTE_OPTIMAL_LAWS["masked"]
    size_tokens = law["D"](law["M"].inverse(m))
    batch_tokens = laws.BATCH_LAW.inverse(batch * seq_len)
    return min(overshoot * size_tokens, horizon * batch_tokens)


def study_lrs(num_layers: int, d_model: int, batch: int) -> tuple[float, ...]:
    """The grid's learning rates for one size and batch (module doc)."""
    eta = laws.optimal_lr(batch * SEQ_LEN)
    log_ladder = [math.log(v) for v in LR_LADDER]
    nearest = min(range(len(LR_LADDER)), key=lambda i: abs(log_ladder[i] - math.log(eta)))
    if batch == TWO_LR_BATCH and (num_layers, d_model) in TWO_LR_SIZES:
        below = max(i for i in range(len(LR_LADDER)) if LR_LADDER[i] <= eta)
        return LR_LADDER[below], LR_LADDER[below + 1]
    return LR_LADDER[nearest - 1], LR_LADDER[nearest], LR_LADDER[nearest + 1]


def study_grid() -> list[GridPoint]:
    """All 510 runs, ordered by noise type, size, batch, LR."""
    return [
        GridPoint(noise, num_layers, d_model, batch, lr)
        for noise in laws.NOISE_TYPES
        for num_layers, d_model in STUDY_SIZES
        for batch in STUDY_BATCHES
        for lr in study_lrs(num_layers, d_model, batch)
    ]


def is_study_point(point: GridPoint) -> bool:
    return (point.tokens is None and point.seq_len == SEQ_LEN and point.vocab_size == VOCAB_SIZE
            and (point.num_layers, point.d_model) in STUDY_SIZES and point.batch in STUDY_BATCHES
            and point.lr in study_lrs(point.num_layers, point.d_model, point.batch))


def grid_point(noise: str, size, batch: int, lr: float, *, tokens: int | None = None,
               seq_len: int = SEQ_LEN, vocab_size: int = VOCAB_SIZE,
               in_study: bool = True) -> GridPoint:
    """Build a run; with in_study (default) it must be one of the study grid's 510 runs."""
    num_layers, d_model = parse_size(size)
    point = GridPoint(noise, num_layers, d_model, int(batch), float(lr), tokens, seq_len,
                      vocab_size)
    if in_study and not is_study_point(point):
        lrs = study_lrs(num_layers, d_model, int(batch)) if (
            (num_layers, d_model) in STUDY_SIZES and batch in STUDY_BATCHES) else ()
        sizes = [size_name(*s) for s in STUDY_SIZES]
        raise ValueError(
            f"{point.key!r} is not a study grid point (sizes {sizes}, batches {STUDY_BATCHES},"
            f" lrs for this size/batch {lrs}); pass in_study=False")
    return point


def parse_point(key: str) -> GridPoint:
    """Inverse of GridPoint.key (any run, not only study points)."""
    fields = {}
    for part in key.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in _KEY_FIELDS or name in fields:
            raise ValueError(f"bad field {part!r} in grid key {key!r}; fields are {_KEY_FIELDS}")
        fields[name] = value
    missing = [n for n in _KEY_FIELDS[:4] if n not in fields]
    if missing:
        raise ValueError(f"grid key {key!r} lacks {missing}")
    num_layers, d_model = parse_size(fields["size"])
    try:
        return GridPoint(
            fields["noise"], num_layers, d_model, int(fields["batch"]), float(fields["lr"]),
            int(fields["tokens"]) if "tokens" in fields else None,
            int(fields.get("seq", SEQ_LEN)), int(fields.get("vocab", VOCAB_SIZE)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad grid key {key!r}: {err}") from err
