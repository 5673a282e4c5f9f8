"""Hyperparameter laws from a batch-size/LR sweep (B in tokens throughout).

Input is a flat table, one row per (run, target loss): the run's group (e.g. size and noise
type), batch B, learning rate η, the target loss and the tokens D the run needed to reach it
(NaN when it never did). For each (group, target):
- optimal batch: D_B = min over η of D, a parabola of log D_B in log B, its vertex (B*, D*);
- optimal LR, for each batch: a parabola of log D in log η, its vertex η*(B).
Only bracketed minima count (see loglog_vertex). Power laws B* = A·D*^α and
η* = A·B^α are then fitted through the vertices of all groups (Huber on logs, bootstrap CIs).

The study's η* law is the best LR *at the optimal batch* (`fit_lr_law_at_optimal_batch`): per
(group, target), a line of log η*(B) in log B evaluated at that target's B*, then a power law over
targets. Pooling every (target, batch) vertex (`fit_lr_law`) estimates the same exponent only when
η* does not depend on the run length; it is kept as a diagnostic.
"""

import numpy as np

from dlmjax.scaling import fit


def loglog_vertex(x, y):
    """Vertex (x*, y*) of a least-squares parabola of log y in log x.

    None unless the minimum is bracketed: the lowest y is not at the smallest or largest x
    (a parabola through points that still fall at an edge places its vertex by extrapolating
    their curvature, which noise and missing runs make unreliable) and the vertex is a minimum
    inside the range.
    """
    u, v = np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64))
    if np.unique(u).size < 3:
        return None
    best = u[np.argmin(v)]
    if best == u.min() or best == u.max():
        return None
    c2, c1, c0 = np.polyfit(u, v, 2)
    if not c2 > 0:
        return None
    u_opt = -c1 / (2 * c2)
    if not u.min() <= u_opt <= u.max():
        return None
    return float(np.exp(u_opt)), float(np.exp(c0 + c1 * u_opt + c2 * u_opt * u_opt))


def target_losses(start_losses, end_losses, num: int = 8):
    """Geometric points strictly between the lowest loss any run reaches and the highest loss
    any run's fitted range starts at; each target then uses the runs whose range holds it."""
    top, bottom = np.max(start_losses), np.min(end_losses)
    if not top > bottom:
        return np.array([])
    return np.exp(np.linspace(np.log(bottom), np.log(top), num + 2)[1:-1])


def _rows(arrays, keys):
    order = {}
    for i, key in enumerate(zip(*(arrays[k] for k in keys))):
        order.setdefault(key, []).append(i)
    return order


def optimal_batches(group, batch, lr, target, tokens) -> list[dict]:
    """One row per (group, target) with an interior vertex: group, target, batch_opt,
    tokens_opt, num_batches."""
    arrays = {"group": np.asarray(group), "batch": np.asarray(batch, np.float64),
              "lr": np.asarray(lr, np.float64), "target": np.asarray(target, np.float64),
              "tokens": np.asarray(tokens, np.float64)}
    out = []
    for (g, t), idx in _rows(arrays, ("group", "target")).items():
        idx = np.array(idx)
        batches, best = [], []
        for b in np.unique(arrays["batch"][idx]):
            d = arrays["tokens"][idx][arrays["batch"][idx] == b]
            if np.any(np.isfinite(d)):
                batches.append(b)
                best.append(np.nanmin(d))
        vertex = loglog_vertex(batches, best) if len(batches) >= 3 else None
        if vertex is not None:
            out.append({"group": g, "target": float(t), "batch_opt": vertex[0],
                        "tokens_opt": vertex[1], "num_batches": len(batches)})
    return out


def optimal_lrs(group, batch, lr, target, tokens) -> list[dict]:
    """One row per (group, target, batch) with an interior vertex in η: group, target, batch,
    lr_opt, tokens_opt, num_lrs."""
    arrays = {"group": np.asarray(group), "batch": np.asarray(batch, np.float64),
              "lr": np.asarray(lr, np.float64), "target": np.asarray(target, np.float64),
              "tokens": np.asarray(tokens, np.float64)}
    out = []
    for (g, t, b), idx in _rows(arrays, ("group", "target", "batch")).items():
        idx = np.array(idx)
        ok = np.isfinite(arrays["tokens"][idx])
        lrs, d = arrays["lr"][idx][ok], arrays["tokens"][idx][ok]
        vertex = loglog_vertex(lrs, d) if lrs.size >= 3 else None
        if vertex is not None:
            out.append({"group": g, "target": float(t), "batch": float(b), "lr_opt": vertex[0],
                        "tokens_opt": vertex[1], "num_lrs": int(lrs.size)})
    return out


def fit_batch_law(rows, *, n_boot: int = 10_000, seed: int = 0) -> fit.PowerLawFit:
    """B* = A·D*^α through the optimal_batches rows."""
    if len(rows) < 3:
        raise ValueError(f"a batch law needs ≥ 3 optimal-batch vertices, got {len(rows)}")
    return fit.bootstrap_power_law([r["tokens_opt"] for r in rows],
                                   [r["batch_opt"] for r in rows], n_boot=n_boot, seed=seed)


def fit_lr_law(rows, *, n_boot: int = 10_000, seed: int = 0) -> fit.PowerLawFit:
    """η* = A·B^α through all optimal_lrs rows pooled over targets: a diagnostic.

    Not the study's estimand (that is `fit_lr_law_at_optimal_batch`): when η* falls with the run
    length at fixed B, the pooled slope mixes that trend into the batch exponent.
    """
    if len(rows) < 3 or len({r["batch"] for r in rows}) < 2:
        raise ValueError(
            f"an LR law needs ≥ 3 optimal-LR vertices over ≥ 2 batches, got {len(rows)}")
    return fit.bootstrap_power_law([r["batch"] for r in rows], [r["lr_opt"] for r in rows],
                                   n_boot=n_boot, seed=seed)


def lr_at_optimal_batch(group, batch, lr, target, tokens) -> list[dict]:
    """One row per (group, target) with both an optimal batch B* and LR vertices at ≥ 2 batches
    whose range holds B*: group, target, batch_opt, lr_opt (the line of log η*(B) in log B at
    B*), tokens_opt, num_batches."""
    lr_rows = {}
    for r in optimal_lrs(group, batch, lr, target, tokens):
        lr_rows.setdefault((r["group"], r["target"]), []).append(r)
    out = []
    for b in optimal_batches(group, batch, lr, target, tokens):
        rows = lr_rows.get((b["group"], b["target"]), [])
        u = np.log([r["batch"] for r in rows])
        if np.unique(u).size < 2:
            continue
        u_opt = np.log(b["batch_opt"])
        if not u.min() <= u_opt <= u.max():
            continue   # extrapolating the line would read η* off batches nobody swept
        slope, intercept = np.polyfit(u, np.log([r["lr_opt"] for r in rows]), 1)
        out.append({"group": b["group"], "target": b["target"], "batch_opt": b["batch_opt"],
                    "lr_opt": float(np.exp(intercept + slope * u_opt)),
                    "tokens_opt": b["tokens_opt"], "num_batches": int(np.unique(u).size)})
    return out


def fit_lr_law_at_optimal_batch(group, batch, lr, target, tokens, *, n_boot: int = 10_000,
                                seed: int = 0, delta=None) -> fit.PowerLawFit:
    """The study's η* = A·B^α (B in tokens): η* at each target's optimal batch B*, then a power
    law over the targets (Huber on logs, percentile CIs from resampling the targets).

    Takes the flat table of optimal_batches/optimal_lrs (tokens NaN where a run never reached the
    target); see lr_at_optimal_batch for the per-target points.
    """
    rows = lr_at_optimal_batch(group, batch, lr, target, tokens)
    if len(rows) < 3:
        raise ValueError(f"an LR law at the optimal batch needs ≥ 3 targets with B* and LR "
                         f"vertices around it, got {len(rows)}")
    return fit.bootstrap_power_law([r["batch_opt"] for r in rows], [r["lr_opt"] for r in rows],
                                   n_boot=n_boot, seed=seed, delta=delta)
