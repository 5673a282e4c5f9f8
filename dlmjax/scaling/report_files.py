"""The written forms of a scaling report: CSV tables and the markdown summary."""

import csv
import os

from dlmjax.scaling import laws


def write_csv(path: str, rows: list[dict]) -> str:
    fields = list(rows[0]) if rows else []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v)
                             for k, v in row.items()})
    return path


def md_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(path: str, result: dict) -> str:
    parts = ["# Scaling report", ""]
    counts = {}
    for s in result["summaries"]:
        counts[(s.noise, s.size)] = counts.get((s.noise, s.size), 0) + 1
    count_rows = [{"noise": n, "size": z, "runs": c} for (n, z), c in sorted(counts.items())]
    parts += [f"{len(result['summaries'])} runs.", "",
              md_table(count_rows, ["noise", "size", "runs"]), ""]
    if result["vertices"]:
        parts += ["## Iso-FLOP vertices (Approach 2)", "",
                  md_table(result["vertices"], ["noise", "compute", "D_opt", "M_opt",
                                                 "loss_opt", "num_points", "interior", "used"]),
                  ""]
    if result["laws"]:
        parts += ["## Compute-optimal laws y = A·C^α (95% bootstrap CIs)", "",
                  md_table(result["laws"], ["noise", "quantity", "A", "alpha", "alpha_lo",
                                             "alpha_hi", "A_lo", "A_hi", "num_points",
                                             "num_resamples", "scheme", "delta"]), "",
                  "scheme: the bootstrap behind the intervals (run: every run's curve "
                  "block-resampled and refitted, the default; residuals/budgets/both: "
                  "point resamplings that treat a run's iso-FLOP points as independent). "
                  "delta: the Huber δ of the power laws on logs (robust: Huber's rule on the "
                  "residuals' MAD; paper: δ = 1 as in the study's scipy fits).", "",
                  "Published (no cooldown): " + "; ".join(
                      f"{n} {q}* = {law.A:.4g}·C^{law.alpha:.4g}"
                      for n, d in laws.COMPUTE_OPTIMAL_LAWS.items() for q, law in d.items()), ""]
    if result["parametric"]:
        parts += ["## Parametric fit L(M, D) = E + A/M^α + B/D^β (Approach 3)", "",
                  "On the iso-FLOP points whose M is within a factor `window` of their budget's "
                  "M* (Approach 2); intervals from the same bootstrap as the laws.", "",
                  md_table(result["parametric"], ["noise", "param", "value", "lo", "hi",
                                                  "points", "window"]), ""]
    if result["hparam_laws"]:
        parts += ["## Hyperparameter laws (B in tokens)", "",
                  md_table(result["hparam_laws"], ["quantity", "A", "alpha", "alpha_lo",
                                                    "alpha_hi", "num_points"]), "",
                  f"Published: B* = {laws.BATCH_LAW.A:.4g}·D^{laws.BATCH_LAW.alpha}, "
                  f"η* = {laws.LR_LAW.A:.4g}·B^{laws.LR_LAW.alpha}", "",
                  "η*(B) is the study's estimand: the best LR at each target's optimal batch B* "
                  "(a line of log η* in log B per target, read at B*), then a power law over "
                  "targets. The pooled row fits every (target, batch) vertex at once; it differs "
                  "when η* depends on the run length. Intervals resample the targets.", ""]
    figures = [f for f in result["files"] if f.endswith(".png")]
    if figures:
        parts += ["## Figures", ""] + [f"![{os.path.basename(f)}]({os.path.basename(f)})"
                                       for f in figures] + [""]
    if result["notes"]:
        parts += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path
